//! Wall-clock times as the records in the bucket write them (RFC 3339, UTC, whole seconds), and
//! durations as manifests write them (`90s`, `30m`, `1h30m`).

/// Now, e.g. `2026-12-01T09:30:00Z`.
pub fn now_rfc3339() -> String {
    let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .expect("fixed format")
}

/// Now, in Unix seconds (fractional).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse(t: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
}

/// Unix seconds of an RFC 3339 time (None: not one).
pub fn seconds_of(t: &str) -> Option<i64> {
    parse(t).map(|t| t.unix_timestamp())
}

/// Seconds from an RFC 3339 time to now (negative: in the future).
pub fn seconds_since(t: &str) -> Option<f64> {
    Some((time::OffsetDateTime::now_utc() - parse(t)?).as_seconds_f64())
}

/// Seconds in a duration such as `90s`, `30m`, `6h`, `1h30m`, `2d`.
pub fn parse_duration(s: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return None,
        };
        total += num.parse::<u64>().ok()? * unit;
        num.clear();
    }
    (num.is_empty() && total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let now = now_rfc3339();
        assert!(now.ends_with('Z') && now.len() == 20, "{now}");
        let age = seconds_since(&now).unwrap();
        assert!((0.0..2.0).contains(&age), "{age}");
        assert_eq!(seconds_of("1970-01-01T00:01:00Z"), Some(60));
        assert_eq!(seconds_of("yesterday"), None);
    }
}
