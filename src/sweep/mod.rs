//! Hyperparameter sweeps, natively and from the bucket: a sweep manifest ([`manifest`]) names a
//! base experiment and a search space over its fields; a sampler ([`sampler`]: random, grid,
//! TPE) proposes trials, each an ordinary run `<sweep>-t001`, …; a pruner ([`pruner`]: median,
//! ASHA) stops the clearly worse ones from their per-epoch validation metrics; the loop
//! ([`driver`]) keeps the sweep's record in `sweeps/<name>/` ([`state`]) so a stopped sweep
//! picks up where it was, from a terminal or from a Job in the cluster ([`in_cluster`]).
//! `sweep status` adds the running trials' runs as they are now ([`live`]); `sweep report`
//! estimates each parameter's importance ([`importance`]); [`view`] is what `sweep status` shows.

pub mod driver;
pub mod importance;
pub mod in_cluster;
pub mod live;
pub mod manifest;
pub mod pruner;
pub mod sampler;
pub mod space;
pub mod state;
pub mod tpe;
pub mod view;

pub use manifest::Sweep;

/// Short column names for the searched paths: the last segment, or more where two would clash
/// (`lr`, `batch_size`, `augmentation.color`).
pub fn short_names(space: &space::Space) -> Vec<String> {
    let paths: Vec<Vec<&str>> = space
        .params
        .iter()
        .map(|p| p.path.split('.').collect())
        .collect();
    paths
        .iter()
        .map(|segs| {
            let mut n = 1;
            loop {
                let tail = segs[segs.len() - n..].join(".");
                let clash = paths
                    .iter()
                    .filter(|o| *o != segs)
                    .any(|o| o.len() >= n && o[o.len() - n..].join(".") == tail);
                if !clash || n == segs.len() {
                    return tail;
                }
                n += 1;
            }
        })
        .collect()
}

/// A parameter or objective value for people: numbers with four significant digits, names as
/// they are.
pub fn fmt_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
        serde_json::Value::Number(n) => fmt_num(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A float with four significant digits (scientific notation when small or large).
pub fn fmt_num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if (1e-3..1e4).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).max(0) as usize;
        let s = format!("{x:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{x:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use space::{Distribution, Param, Space};

    #[test]
    fn names_and_numbers_for_people() {
        let p = |path: &str| Param {
            path: path.into(),
            dist: Distribution::Uniform {
                low: 0.0,
                high: 1.0,
            },
        };
        let s = Space {
            params: vec![
                p("train.optimizer.lr"),
                p("train.augmentation.color"),
                p("train.model.color"),
            ],
        };
        assert_eq!(
            short_names(&s),
            vec!["lr", "augmentation.color", "model.color"]
        );
        assert_eq!(fmt_num(0.001234567), "0.001235");
        assert_eq!(fmt_num(0.5), "0.5");
        assert_eq!(fmt_num(12.5), "12.5");
        assert_eq!(fmt_num(3.2e-5), "3.200e-5");
        assert_eq!(fmt_value(&serde_json::json!(64)), "64");
        assert_eq!(fmt_value(&serde_json::json!("shuffle")), "shuffle");
    }
}
