//! The search space: parameters addressed by dotted paths into the experiment manifest
//! (`train.optimizer.lr`), their distributions, and how a trial's values are written into the
//! experiment.
//!
//! Samplers work on a point: one `f64` per parameter, in manifest order: the value itself for
//! `uniform`, `log_uniform` and `int` (log-scale or not), the index of the choice for `categorical`.

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

/// How a parameter is drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Distribution {
    /// A float, uniform in `[low, high]`.
    Uniform { low: f64, high: f64 },
    /// A positive float whose logarithm is uniform in `[ln low, ln high]`.
    LogUniform { low: f64, high: f64 },
    /// An integer in `low, low + step, …, ≤ high`; with `log: true` (step 1, low ≥ 1) its
    /// logarithm is what is searched, as for `log_uniform`.
    Int {
        low: i64,
        high: i64,
        #[serde(default = "one")]
        step: i64,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        log: bool,
    },
    /// One of the values listed (any YAML value: a number, a name, a mapping).
    Categorical {
        #[schemars(with = "Vec<serde_json::Value>")]
        choices: Vec<serde_yaml::Value>,
    },
}

fn one() -> i64 {
    1
}

impl Distribution {
    /// The distribution's name as written in manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Distribution::Uniform { .. } => "uniform",
            Distribution::LogUniform { .. } => "log_uniform",
            Distribution::Int { .. } => "int",
            Distribution::Categorical { .. } => "categorical",
        }
    }

    /// Whether it is searched on a log scale: `log_uniform`, or an `int` with `log: true`.
    pub fn log_scale(&self) -> bool {
        matches!(
            self,
            Distribution::LogUniform { .. } | Distribution::Int { log: true, .. }
        )
    }

    /// Checks bounds and choices; the message says what is wrong.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
                if !low.is_finite() || !high.is_finite() {
                    return Err("low and high must be finite numbers".into());
                }
                if low >= high {
                    return Err(format!("low ({low}) must be below high ({high})"));
                }
                if matches!(self, Distribution::LogUniform { .. }) && *low <= 0.0 {
                    return Err(format!("log_uniform needs low > 0, not {low}"));
                }
            }
            Distribution::Int {
                low,
                high,
                step,
                log,
            } => {
                if *log && *low < 1 {
                    return Err(format!("a log-scale int needs low ≥ 1, not {low}"));
                }
                if *log && *step != 1 {
                    return Err(format!("a log-scale int needs step 1, not {step}"));
                }
                if low >= high {
                    return Err(format!("low ({low}) must be below high ({high})"));
                }
                if *step < 1 {
                    return Err(format!("step must be at least 1, not {step}"));
                }
                if step > &(high - low) {
                    return Err(format!(
                        "step ({step}) leaves only low ({low}) in [{low}, {high}]"
                    ));
                }
            }
            Distribution::Categorical { choices } => {
                if choices.len() < 2 {
                    return Err("categorical needs at least two choices".into());
                }
                for (i, c) in choices.iter().enumerate() {
                    if choices[..i].contains(c) {
                        return Err(format!(
                            "choice {} is listed twice",
                            serde_yaml::to_string(c).unwrap_or_default().trim()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The number of values an `int` or `categorical` can take.
    pub fn count(&self) -> Option<usize> {
        match self {
            Distribution::Int {
                low, high, step, ..
            } => Some(((high - low) / step + 1) as usize),
            Distribution::Categorical { choices } => Some(choices.len()),
            _ => None,
        }
    }

    /// The value of point coordinate `x` as written into the experiment.
    pub fn to_json(&self, x: f64) -> serde_json::Value {
        match self {
            Distribution::Uniform { .. } | Distribution::LogUniform { .. } => {
                serde_json::json!(x)
            }
            Distribution::Int { .. } => serde_json::json!(x.round() as i64),
            Distribution::Categorical { choices } => {
                let c = &choices[(x as usize).min(choices.len() - 1)];
                serde_json::to_value(c).unwrap_or(serde_json::Value::Null)
            }
        }
    }

    /// The point coordinate of a recorded value; `None` if it is not a value of this
    /// distribution (a state written for another search).
    pub fn from_json(&self, v: &serde_json::Value) -> Option<f64> {
        match self {
            Distribution::Uniform { low, high } | Distribution::LogUniform { low, high } => {
                v.as_f64().filter(|x| (*low..=*high).contains(x))
            }
            Distribution::Int { low, high, .. } => v
                .as_i64()
                .filter(|x| (*low..=*high).contains(x))
                .map(|x| x as f64),
            Distribution::Categorical { choices } => choices
                .iter()
                .position(|c| serde_json::to_value(c).ok().as_ref() == Some(v))
                .map(|i| i as f64),
        }
    }

    /// A few values that exercise the range, for checking the experiment they make.
    pub fn probes(&self) -> Vec<f64> {
        match self {
            Distribution::Uniform { low, high } => vec![*low, (low + high) / 2.0, *high],
            Distribution::LogUniform { low, high } => vec![*low, (low * high).sqrt(), *high],
            Distribution::Int {
                low, high, step, ..
            } => {
                vec![*low as f64, (low + (high - low) / step * step) as f64]
            }
            Distribution::Categorical { choices } => (0..choices.len()).map(|i| i as f64).collect(),
        }
    }
}

/// One searched parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct Param {
    /// Dotted path into the experiment: `train.optimizer.lr`.
    pub path: String,
    pub dist: Distribution,
}

/// The searched parameters, in manifest order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Space {
    pub params: Vec<Param>,
}

impl<'de> Deserialize<'de> for Space {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Space;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping of parameter paths to distributions")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Space, A::Error> {
                let mut params: Vec<Param> = vec![];
                while let Some(path) = m.next_key::<String>()? {
                    if params.iter().any(|p| p.path == path) {
                        return Err(de::Error::custom(format!(
                            "parameter `{path}` is listed twice"
                        )));
                    }
                    let dist = m.next_value::<Distribution>()?;
                    params.push(Param { path, dist });
                }
                Ok(Space { params })
            }
        }
        d.deserialize_map(V)
    }
}

impl Space {
    /// The point as `(path, value)` pairs.
    pub fn values(&self, point: &[f64]) -> Vec<(String, serde_json::Value)> {
        self.params
            .iter()
            .zip(point)
            .map(|(p, &x)| (p.path.clone(), p.dist.to_json(x)))
            .collect()
    }
}

/// Writes `value` at the dotted `path` of a YAML mapping, creating the mappings on the way.
pub fn set_path(
    doc: &mut serde_yaml::Mapping,
    path: &str,
    value: serde_yaml::Value,
) -> Result<(), String> {
    let keys: Vec<&str> = path.split('.').collect();
    let mut node = doc;
    for (i, key) in keys.iter().enumerate() {
        let k = serde_yaml::Value::String(key.to_string());
        if i + 1 == keys.len() {
            node.insert(k, value);
            return Ok(());
        }
        let entry = node
            .entry(k)
            .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
        if entry.is_null() {
            *entry = serde_yaml::Value::Mapping(Default::default());
        }
        node = match entry {
            serde_yaml::Value::Mapping(m) => m,
            _ => {
                return Err(format!(
                    "cannot set {path}: {} is not a mapping",
                    keys[..=i].join(".")
                ));
            }
        };
    }
    Ok(())
}

/// Why a parameter path is malformed, if it is.
pub fn bad_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("is empty".into());
    }
    for seg in path.split('.') {
        let ok = !seg.is_empty()
            && seg
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            && !seg.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Some(format!(
                "segment '{seg}' is not a field name (lowercase letters, digits and '_')"
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_path_creates_and_replaces() {
        let mut m: serde_yaml::Mapping = serde_yaml::from_str(
            "train:\n  optimizer: {kind: adam, lr: 0.1}\n  early_stopping: null\n",
        )
        .unwrap();
        set_path(&mut m, "train.optimizer.lr", 0.01.into()).unwrap();
        set_path(&mut m, "train.augmentation.color", 0.5.into()).unwrap();
        set_path(&mut m, "train.early_stopping.patience", 2.into()).unwrap();
        let v: serde_yaml::Value = serde_yaml::Value::Mapping(m.clone());
        assert_eq!(v["train"]["optimizer"]["lr"], 0.01);
        assert_eq!(v["train"]["optimizer"]["kind"], "adam");
        assert_eq!(v["train"]["augmentation"]["color"], 0.5);
        assert_eq!(v["train"]["early_stopping"]["patience"], 2);
        let err = set_path(&mut m, "train.optimizer.lr.x", 1.into()).unwrap_err();
        assert_eq!(
            err,
            "cannot set train.optimizer.lr.x: train.optimizer.lr is not a mapping"
        );
    }

    #[test]
    fn values_round_trip_through_json() {
        let c = Distribution::Categorical {
            choices: vec!["weighted".into(), "shuffle".into()],
        };
        assert_eq!(c.to_json(1.0), serde_json::json!("shuffle"));
        assert_eq!(c.from_json(&serde_json::json!("shuffle")), Some(1.0));
        assert_eq!(c.from_json(&serde_json::json!("other")), None);
        let i = Distribution::Int {
            low: 32,
            high: 256,
            step: 32,
            log: false,
        };
        assert_eq!(i.count(), Some(8));
        assert_eq!(i.to_json(64.0), serde_json::json!(64));
        assert_eq!(i.probes(), vec![32.0, 256.0]);
        assert!(
            Distribution::LogUniform {
                low: 0.0,
                high: 1.0
            }
            .check()
            .is_err()
        );
        let log_int = |low, step| Distribution::Int {
            low,
            high: 512,
            step,
            log: true,
        };
        assert!(log_int(8, 1).check().is_ok());
        assert!(log_int(0, 1).check().unwrap_err().contains("low ≥ 1"));
        assert!(log_int(8, 8).check().unwrap_err().contains("step 1"));
        assert!(bad_path("train.optimizer.lr").is_none());
        assert!(bad_path("train..lr").is_some() && bad_path("Train").is_some());
    }
}
