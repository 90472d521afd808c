//! Parsing of Kaggle patch names: `<patient>/<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png`.

use std::fmt;

/// What a patch's file name says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PatchName {
    pub patient: u32,
    pub x: u32,
    pub y: u32,
    /// 0: no IDC, 1: IDC.
    pub class: u8,
}

impl fmt::Display for PatchName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}_idx5_x{}_y{}_class{}.png",
            self.patient, self.x, self.y, self.class
        )
    }
}

impl PatchName {
    /// The path of this patch relative to the patient folders: `<patient>/<class>/<name>`.
    pub fn rel_path(&self) -> String {
        format!("{}/{}/{}", self.patient, self.class, self)
    }
}

/// Why a name is not a patch name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("not a .png file")]
    NotPng,
    #[error("name does not match <patient>_idx5_x<X>_y<Y>_class<0|1>.png ({0})")]
    Pattern(&'static str),
    #[error("file is in folder '{folder}' but its name says {what} {value}")]
    FolderMismatch {
        folder: String,
        what: &'static str,
        value: String,
    },
}

/// Parses a file name (no folders) such as `8863_idx5_x1051_y1051_class1.png`.
pub fn parse_file_name(name: &str) -> Result<PatchName, NameError> {
    let (name, class) = parse_name(name, true)?;
    Ok(PatchName {
        class: class.expect("required"),
        ..name
    })
}

/// Parses the name of an image to predict: a patch name with its `_class<C>` (its label) or
/// without (`8863_idx5_x1051_y1051.png`, label unknown). The returned name's class is 0 when
/// there is no label. Folders are not checked, except that a labelled name in a `0` or `1`
/// folder must agree with it, as in the Kaggle layout.
pub fn parse_predict_path(rel: &str) -> Result<(PatchName, Option<u8>), NameError> {
    let mut comps = rel.rsplit('/');
    let file = comps.next().unwrap_or(rel);
    let (name, label) = parse_name(file, false)?;
    if let (Some(c), Some(dir @ ("0" | "1"))) = (label, comps.next())
        && dir != c.to_string()
    {
        return Err(NameError::FolderMismatch {
            folder: dir.into(),
            what: "class",
            value: c.to_string(),
        });
    }
    Ok((
        PatchName {
            class: label.unwrap_or(0),
            ..name
        },
        label,
    ))
}

/// The name's fields and its class, which must be there when `require_class`.
fn parse_name(name: &str, require_class: bool) -> Result<(PatchName, Option<u8>), NameError> {
    let stem = name
        .strip_suffix(".png")
        .or_else(|| name.strip_suffix(".PNG"))
        .ok_or(NameError::NotPng)?;
    let mut parts = stem.split('_');
    let patient = parts.next().ok_or(NameError::Pattern("no patient id"))?;
    let patient = number(patient).ok_or(NameError::Pattern("patient id is not a number"))?;
    if parts.next() != Some("idx5") {
        return Err(NameError::Pattern("missing '_idx5_'"));
    }
    let x = parts
        .next()
        .and_then(|p| p.strip_prefix('x'))
        .and_then(number)
        .ok_or(NameError::Pattern("missing x<X>"))?;
    let y = parts
        .next()
        .and_then(|p| p.strip_prefix('y'))
        .and_then(number)
        .ok_or(NameError::Pattern("missing y<Y>"))?;
    let class = match parts.next() {
        None if !require_class => None,
        None => return Err(NameError::Pattern("missing class<C>")),
        Some(p) => match p.strip_prefix("class") {
            Some("0") => Some(0),
            Some("1") => Some(1),
            Some(_) => return Err(NameError::Pattern("class must be 0 or 1")),
            None if require_class => return Err(NameError::Pattern("missing class<C>")),
            None => return Err(NameError::Pattern("unexpected text after y<Y>")),
        },
    };
    if parts.next().is_some() {
        return Err(NameError::Pattern("unexpected text after class"));
    }
    Ok((
        PatchName {
            patient,
            x,
            y,
            class: class.unwrap_or(0),
        },
        class,
    ))
}

/// Parses a path relative to the dataset root and checks that the class folder (and the
/// patient folder, when present) agree with the name.
pub fn parse_path(rel: &str) -> Result<PatchName, NameError> {
    let mut comps = rel.rsplit('/');
    let file = comps.next().unwrap_or(rel);
    let name = parse_file_name(file)?;
    if let Some(class_dir) = comps.next() {
        if class_dir != name.class.to_string() {
            return Err(NameError::FolderMismatch {
                folder: class_dir.into(),
                what: "class",
                value: name.class.to_string(),
            });
        }
        if let Some(patient_dir) = comps.next()
            && patient_dir != name.patient.to_string()
        {
            return Err(NameError::FolderMismatch {
                folder: patient_dir.into(),
                what: "patient",
                value: name.patient.to_string(),
            });
        }
    }
    Ok(name)
}

fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_names() {
        assert_eq!(
            parse_file_name("8863_idx5_x1051_y1051_class1.png").unwrap(),
            PatchName {
                patient: 8863,
                x: 1051,
                y: 1051,
                class: 1
            }
        );
        let p =
            parse_path("IDC_regular_ps50_idx5/10253/0/10253_idx5_x501_y351_class0.png").unwrap();
        assert_eq!(
            p,
            PatchName {
                patient: 10253,
                x: 501,
                y: 351,
                class: 0
            }
        );
        assert_eq!(p.rel_path(), "10253/0/10253_idx5_x501_y351_class0.png");
        assert_eq!(
            parse_path("8975/0/8975_idx5_x3601_y1701_class0.png")
                .unwrap()
                .x,
            3601
        );
        assert_eq!(
            parse_file_name("9_idx5_x0_y0_class0.PNG").unwrap().patient,
            9
        );
    }

    #[test]
    fn rejects_bad_names() {
        use NameError::*;
        let cases = [
            ("8863_idx5_x1051_y1051_class1.jpg", NotPng),
            (".DS_Store", NotPng),
            (
                "8863_idx5_x1051_y1051_class2.png",
                Pattern("class must be 0 or 1"),
            ),
            (
                "8863_idx4_x1051_y1051_class1.png",
                Pattern("missing '_idx5_'"),
            ),
            (
                "abc_idx5_x1_y1_class1.png",
                Pattern("patient id is not a number"),
            ),
            ("8863_idx5_y1051_x1051_class1.png", Pattern("missing x<X>")),
            ("8863_idx5_x-1_y1051_class1.png", Pattern("missing x<X>")),
            ("8863_idx5_x1_y_class1.png", Pattern("missing y<Y>")),
            ("8863_idx5_x1_y1.png", Pattern("missing class<C>")),
            (
                "8863_idx5_x1_y1_class1_copy.png",
                Pattern("unexpected text after class"),
            ),
            (
                "8863_idx5_x99999999999_y1_class1.png",
                Pattern("missing x<X>"),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(parse_file_name(name), Err(want), "{name}");
        }
    }

    #[test]
    fn names_to_predict_may_leave_the_label_out() {
        let (n, label) = parse_predict_path("slide/8863_idx5_x51_y101.png").unwrap();
        assert_eq!((n.patient, n.x, n.y, label), (8863, 51, 101, None));
        let (n, label) = parse_predict_path("8863_idx5_x51_y101_class1.png").unwrap();
        assert_eq!((n.class, label), (1, Some(1)));
        // Any folder, but a class folder must agree with a labelled name.
        assert!(parse_predict_path("mine/8863_idx5_x51_y101_class1.png").is_ok());
        assert!(parse_predict_path("0/8863_idx5_x51_y101_class1.png").is_err());
        assert!(parse_predict_path("1/8863_idx5_x51_y101.png").is_ok());
        assert_eq!(
            parse_predict_path("8863_idx5_x51_y101_copy.png").unwrap_err(),
            NameError::Pattern("unexpected text after y<Y>")
        );
        assert_eq!(
            parse_file_name("8863_idx5_x1_y1_copy.png").unwrap_err(),
            NameError::Pattern("missing class<C>")
        );
    }

    #[test]
    fn checks_folders() {
        let e = parse_path("8863/0/8863_idx5_x1_y1_class1.png").unwrap_err();
        assert_eq!(
            e.to_string(),
            "file is in folder '0' but its name says class 1"
        );
        let e = parse_path("8864/1/8863_idx5_x1_y1_class1.png").unwrap_err();
        assert_eq!(
            e.to_string(),
            "file is in folder '8864' but its name says patient 8863"
        );
    }
}
