//! Floats in the bucket's JSON records, non-finite ones included: JSON has no NaN or infinity,
//! so NaN is written as `null` (as serde_json does) and infinities as the strings `"Infinity"`
//! and `"-Infinity"`; reading accepts all three (and `"NaN"`). Use with
//! `#[serde(with = "crate::json_float")]`, or `json_float::vec` for a `Vec<f64>`.

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_nan() {
        s.serialize_none()
    } else if v.is_infinite() {
        s.serialize_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(*v)
    }
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    d.deserialize_any(FloatVisitor)
}

struct FloatVisitor;

impl<'de> Visitor<'de> for FloatVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number, null (NaN), \"Infinity\" or \"-Infinity\"")
    }
    fn visit_f64<E>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_unit<E>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
    fn visit_none<E>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
        }
    }
}

/// The same for every element of a `Vec<f64>`.
pub mod vec {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct F(#[serde(with = "super")] f64);

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| F(*x)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<F>::deserialize(d)?.into_iter().map(|f| f.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Serialize, Deserialize)]
    struct R {
        #[serde(with = "super")]
        x: f64,
        #[serde(with = "super::vec")]
        v: Vec<f64>,
    }

    #[test]
    fn non_finite_values_round_trip() {
        let r = R {
            x: f64::NEG_INFINITY,
            v: vec![0.5, f64::NAN, f64::INFINITY, 3.0],
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"x":"-Infinity","v":[0.5,null,"Infinity",3.0]}"#);
        let back: R = serde_json::from_str(&json).unwrap();
        assert_eq!(back.x, f64::NEG_INFINITY);
        assert!(back.v[1].is_nan() && back.v[2] == f64::INFINITY && back.v[3] == 3.0);
        let old: R = serde_json::from_str(r#"{"x":null,"v":[1,"NaN"]}"#).unwrap();
        assert!(old.x.is_nan() && old.v[0] == 1.0 && old.v[1].is_nan());
        let e = serde_json::from_str::<R>(r#"{"x":"lots","v":[]}"#).unwrap_err();
        assert!(e.to_string().contains("\"Infinity\""), "{e}");
    }
}
