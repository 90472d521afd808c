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

/// Seconds in a duration such as `90s`, `30m`, `6h`, `1h30m`, `2d`: whole numbers of days,
/// hours, minutes and seconds, written together, more than none. humantime reads them; its
/// other forms (spaces, `ms`, `w`, `min`, ...) were never accepted here and stay refused, so
/// that every manifest means what it did.
pub fn parse_duration(s: &str) -> Option<u64> {
    // Each number must be followed by exactly one of the four units: this refuses `ms` (which
    // humantime reads as milliseconds) as well as its other forms.
    let mut after_digit = false;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => after_digit = true,
            b's' | b'm' | b'h' | b'd' if after_digit => after_digit = false,
            _ => return None,
        }
    }
    let d = humantime::parse_duration(s).ok()?;
    (d.as_secs() > 0).then_some(d.as_secs())
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

    #[test]
    fn durations_are_whole_days_hours_minutes_and_seconds() {
        for (d, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("6h", 21600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("1d1h1m1s", 90061),
            ("1m1m", 120),
        ] {
            assert_eq!(parse_duration(d), Some(secs), "{d}");
        }
        for d in [
            "",
            "6",
            "0s",
            "0h0m",
            "1w",
            "1h 30m",
            "500ms",
            "1000ms",
            "0ms1s",
            "2min",
            "1.5h",
            "-1h",
            "m",
            "1h30",
            "99999999999999999999d",
            "18446744073709551615d",
            "1y",
            "1M",
        ] {
            assert_eq!(parse_duration(d), None, "{d}");
        }
    }
}
