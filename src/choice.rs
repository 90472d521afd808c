//! Enums named on the command line and in files: each value's one name (as `--help` lists it
//! and serde writes it), its `FromStr`/`Display` through that name, and the line saying what it
//! means. The command line builds its parsers from these, so the library needs no CLI crate.

/// An enum whose values are chosen by name.
pub trait Choice: Sized + Copy + Send + Sync + 'static {
    /// Every value, in the order `--help` lists them.
    const ALL: &'static [Self];

    /// The value's name (kebab-case; the same as serde's where the type is also serde).
    fn name(self) -> &'static str;

    /// What the value means, for `--help`; `None` where the name says it.
    fn about(self) -> Option<&'static str> {
        None
    }
}

/// A name that is none of a [`Choice`]'s values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{given}' is not one of: {}", .expected.join(", "))]
pub struct UnknownName {
    pub given: String,
    pub expected: Vec<&'static str>,
}

/// The value of `T` named `s` (exactly).
pub fn parse<T: Choice>(s: &str) -> Result<T, UnknownName> {
    T::ALL
        .iter()
        .copied()
        .find(|v| v.name() == s)
        .ok_or_else(|| UnknownName {
            given: s.to_string(),
            expected: T::ALL.iter().map(|v| v.name()).collect(),
        })
}

/// Implements `FromStr` and `Display` of a [`Choice`] through its names.
#[macro_export]
macro_rules! choice_names {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = $crate::choice::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $crate::choice::parse(s)
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::choice::Choice::name(*self))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Two {
        One,
        Two,
    }

    impl Choice for Two {
        const ALL: &'static [Self] = &[Two::One, Two::Two];
        fn name(self) -> &'static str {
            match self {
                Two::One => "one",
                Two::Two => "two",
            }
        }
    }

    #[test]
    fn parses_exact_names_only() {
        assert_eq!(parse::<Two>("two"), Ok(Two::Two));
        let e = parse::<Two>("Two").unwrap_err();
        assert_eq!(e.to_string(), "'Two' is not one of: one, two");
    }
}
