//! TIFF as far as a slide needs it besides OpenSlide: what kind of file a slide is, from its
//! first bytes, and the scale its first image's resolution tags give (microns per pixel), for
//! slides whose vendor properties carry none (generic and OME TIFFs).
//!
//! Slides run to gigabytes, so [`resolution_mpp`] reads only the header and the first image
//! file directory (IFD), a few small reads at the offsets the file gives, each checked against
//! the file's length first.

use crate::exit::{ExitCode, ProcessExitCode};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// What a file is, by its first bytes ([`sniff`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Classic TIFF (`II*\0` or `MM\0*`): 32-bit offsets.
    Tiff,
    /// BigTIFF (`II+\0` or `MM\0+`): 64-bit offsets.
    BigTiff,
    /// A ZIP archive (`PK\x03\x04`).
    Zip,
    /// A PNG image.
    Png,
    /// A JPEG image (`FF D8 FF`).
    Jpeg,
    /// Anything else, or too few bytes to tell.
    Other,
}

impl Kind {
    /// What the kind is called in a message: "a ZIP archive".
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Tiff => "a TIFF file",
            Kind::BigTiff => "a BigTIFF file",
            Kind::Zip => "a ZIP archive",
            Kind::Png => "a PNG image",
            Kind::Jpeg => "a JPEG image",
            Kind::Other => "no known format",
        }
    }
}

/// The kind of file that starts with `head` (its first 8 bytes are enough).
pub fn sniff(head: &[u8]) -> Kind {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    match head {
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Kind::Tiff,
        [b'I', b'I', 43, 0, ..] | [b'M', b'M', 0, 43, ..] => Kind::BigTiff,
        [b'P', b'K', 3, 4, ..] => Kind::Zip,
        [0xFF, 0xD8, 0xFF, ..] => Kind::Jpeg,
        _ if head.starts_with(PNG) => Kind::Png,
        _ => Kind::Other,
    }
}

/// Why a file's TIFF resolution could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TiffError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a TIFF file: it is {found} (first bytes {head})", path.display())]
    NotTiff {
        path: PathBuf,
        /// What it is instead ([`Kind::describe`]).
        found: &'static str,
        /// Its first bytes, in hex.
        head: String,
    },
    #[error(
        "{} is a truncated TIFF: its {what} at offset {offset} ({need} bytes) runs past the \
         end of the file ({len} bytes); is the file complete?",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        /// The structure that does not fit: "first IFD", "XResolution value".
        what: String,
        offset: u64,
        need: u64,
        /// The file's length.
        len: u64,
    },
    #[error("{} is a corrupt TIFF: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

impl ProcessExitCode for TiffError {
    /// A slide that is not a readable TIFF is the user's input to fix; so is a path that does
    /// not exist or may not be read. Other read errors may pass on retry.
    fn process_exit_code(&self) -> ExitCode {
        match self {
            TiffError::Io { source, .. }
                if !matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
                ) =>
            {
                ExitCode::Failure
            }
            _ => ExitCode::UserError,
        }
    }
}

/// Tags read from the first IFD.
const X_RESOLUTION: u16 = 282;
const Y_RESOLUTION: u16 = 283;
const RESOLUTION_UNIT: u16 = 296;
/// More entries than this in one IFD is a corrupt count, not a real image (BigTIFF's count is
/// 64-bit; classic TIFF cannot exceed 65535 either).
const MAX_ENTRIES: u64 = 65_535;

/// The microns per pixel (x, y) that the resolution tags of `path`'s first image give:
/// XResolution and YResolution (pixels per unit) with ResolutionUnit (2, inch, when absent;
/// 3, centimetre). `Ok(None)` when the file says no unit (1) or an unknown one, or lacks either
/// resolution, or gives one that is zero or not finite. Classic TIFF and BigTIFF, either byte
/// order; only the header and the first IFD are read.
pub fn resolution_mpp(path: &Path) -> Result<Option<(f64, f64)>, TiffError> {
    let mut r = Reader::open(path)?;
    let ifd = r.first_ifd_offset()?;
    let entries = r.entries(ifd)?;
    let find = |tag: u16| entries.iter().find(|e| e.tag == tag);
    let unit = match find(RESOLUTION_UNIT) {
        None => 2.0,
        Some(e) => match r.first_value(e, "ResolutionUnit value")? {
            Some(u) => u,
            None => return Ok(None),
        },
    };
    let microns_per_unit = match unit {
        2.0 => 25_400.0,
        3.0 => 10_000.0,
        _ => return Ok(None),
    };
    let (Some(x), Some(y)) = (find(X_RESOLUTION), find(Y_RESOLUTION)) else {
        return Ok(None);
    };
    let mpp = |res: Option<f64>| {
        res.filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| microns_per_unit / r)
            .filter(|m| m.is_finite())
    };
    let x = mpp(r.first_value(x, "XResolution value")?);
    let y = mpp(r.first_value(y, "YResolution value")?);
    Ok(x.zip(y))
}

/// One IFD entry: its tag, field type, value count and the value-or-offset field (4 bytes in
/// classic TIFF, 8 in BigTIFF; the first bytes used when shorter).
#[derive(Debug, Clone, Copy)]
struct Entry {
    tag: u16,
    kind: u16,
    count: u64,
    field: [u8; 8],
}

/// A TIFF file being read: its byte order and offset width.
struct Reader<'a> {
    path: &'a Path,
    file: File,
    len: u64,
    big_endian: bool,
    big_tiff: bool,
}

impl<'a> Reader<'a> {
    /// Opens `path` and reads its header's byte order and kind.
    fn open(path: &'a Path) -> Result<Self, TiffError> {
        let io = |source| TiffError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let mut head = Vec::with_capacity(8);
        (&mut file).take(8).read_to_end(&mut head).map_err(io)?;
        let big_tiff = match sniff(&head) {
            Kind::Tiff => false,
            Kind::BigTiff => true,
            other => {
                return Err(TiffError::NotTiff {
                    path: path.to_path_buf(),
                    found: other.describe(),
                    head: head.iter().map(|b| format!("{b:02x}")).collect(),
                });
            }
        };
        Ok(Reader {
            path,
            file,
            len,
            big_endian: head[0] == b'M',
            big_tiff,
        })
    }

    /// `buf.len()` bytes at `offset`, which must lie within the file.
    fn read_at(&mut self, offset: u64, buf: &mut [u8], what: &str) -> Result<(), TiffError> {
        let need = buf.len() as u64;
        if offset.checked_add(need).is_none_or(|end| end > self.len) {
            return Err(TiffError::Truncated {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset,
                need,
                len: self.len,
            });
        }
        let io = |source| TiffError::Io {
            path: self.path.to_path_buf(),
            source,
        };
        self.file.seek(SeekFrom::Start(offset)).map_err(io)?;
        self.file.read_exact(buf).map_err(io)
    }

    /// The unsigned integer in `b` (1 to 8 bytes) in the file's byte order.
    fn uint(&self, b: &[u8]) -> u64 {
        let fold = |acc: u64, &x: &u8| (acc << 8) | x as u64;
        if self.big_endian {
            b.iter().fold(0, fold)
        } else {
            b.iter().rev().fold(0, fold)
        }
    }

    fn corrupt(&self, reason: String) -> TiffError {
        TiffError::Corrupt {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    /// The first IFD's offset, from the header.
    fn first_ifd_offset(&mut self) -> Result<u64, TiffError> {
        let offset = if self.big_tiff {
            let mut h = [0u8; 16];
            self.read_at(0, &mut h, "header")?;
            let (bytesize, reserved) = (self.uint(&h[4..6]), self.uint(&h[6..8]));
            if bytesize != 8 || reserved != 0 {
                return Err(self.corrupt(format!(
                    "its BigTIFF header gives offset size {bytesize} and reserved {reserved} \
                     (8 and 0 expected)"
                )));
            }
            self.uint(&h[8..16])
        } else {
            let mut h = [0u8; 8];
            self.read_at(0, &mut h, "header")?;
            self.uint(&h[4..8])
        };
        if offset == 0 {
            return Err(self.corrupt("its header points to no image (first IFD offset 0)".into()));
        }
        Ok(offset)
    }

    /// The entries of the IFD at `offset`.
    fn entries(&mut self, offset: u64) -> Result<Vec<Entry>, TiffError> {
        let (count_len, entry_len, field_len) = if self.big_tiff {
            (8, 20, 8)
        } else {
            (2, 12, 4)
        };
        let mut c = [0u8; 8];
        self.read_at(offset, &mut c[..count_len], "first IFD")?;
        let count = self.uint(&c[..count_len]);
        if count > MAX_ENTRIES {
            return Err(self.corrupt(format!(
                "its first IFD, at offset {offset}, claims {count} entries"
            )));
        }
        // Checked as a whole, so that a cut names where the IFD starts.
        let need = count_len as u64 + count * entry_len as u64;
        if offset.saturating_add(need) > self.len {
            return Err(TiffError::Truncated {
                path: self.path.to_path_buf(),
                what: "first IFD".into(),
                offset,
                need,
                len: self.len,
            });
        }
        let mut raw = vec![0u8; count as usize * entry_len];
        self.read_at(offset + count_len as u64, &mut raw, "first IFD")?;
        Ok(raw
            .chunks_exact(entry_len)
            .map(|e| {
                let mut field = [0u8; 8];
                field[..field_len].copy_from_slice(&e[entry_len - field_len..]);
                Entry {
                    tag: self.uint(&e[0..2]) as u16,
                    kind: self.uint(&e[2..4]) as u16,
                    count: self.uint(&e[4..entry_len - field_len]),
                    field,
                }
            })
            .collect())
    }

    /// The first value of entry `e` as a number: from the entry itself when its values fit
    /// there, else read at the offset it gives. `None` for a field type that holds no number
    /// (or a rational with denominator 0), or no values.
    fn first_value(&mut self, e: &Entry, what: &str) -> Result<Option<f64>, TiffError> {
        // Field types: SHORT, LONG, RATIONAL, SRATIONAL, FLOAT, DOUBLE, LONG8.
        let size: u64 = match e.kind {
            3 => 2,
            4 | 11 => 4,
            5 | 10 | 12 | 16 => 8,
            _ => return Ok(None),
        };
        if e.count == 0 {
            return Ok(None);
        }
        let inline = if self.big_tiff { 8 } else { 4 };
        let mut b = [0u8; 8];
        let b = &mut b[..size as usize];
        if e.count.saturating_mul(size) <= inline {
            b.copy_from_slice(&e.field[..size as usize]);
        } else {
            let offset = self.uint(&e.field[..inline as usize]);
            self.read_at(offset, b, what)?;
        }
        let half = |r: &Self, i: usize| r.uint(&b[4 * i..4 * i + 4]);
        let value = match e.kind {
            3 | 4 | 16 => self.uint(b) as f64,
            5 | 10 => {
                let (num, den) = (half(self, 0), half(self, 1));
                let (num, den) = if e.kind == 10 {
                    (num as u32 as i32 as f64, den as u32 as i32 as f64)
                } else {
                    (num as f64, den as f64)
                };
                if den == 0.0 {
                    return Ok(None);
                }
                num / den
            }
            11 => f32::from_bits(self.uint(b) as u32) as f64,
            _ => f64::from_bits(self.uint(b)),
        };
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resolution tag's value: numerator, denominator.
    type Rational = (u32, u32);

    /// A one-image TIFF (classic or big, either byte order) whose first IFD holds ImageWidth,
    /// the resolutions and unit given, and a second IFD after it. Entries sorted by tag.
    fn build(
        big_endian: bool,
        big: bool,
        x: Option<Rational>,
        y: Option<Rational>,
        unit: Option<u16>,
    ) -> Vec<u8> {
        let put = |out: &mut Vec<u8>, v: u64, n: usize| {
            let b = v.to_be_bytes();
            let b = &b[8 - n..];
            if big_endian {
                out.extend_from_slice(b);
            } else {
                out.extend(b.iter().rev());
            }
        };
        let (off, cnt, field) = if big { (8, 8, 8) } else { (4, 2, 4) };
        let mut entries: Vec<(u16, u16, Vec<u8>)> = vec![(256, 4, {
            let mut v = Vec::new();
            put(&mut v, 1000, 4);
            v
        })];
        for (tag, r) in [(X_RESOLUTION, x), (Y_RESOLUTION, y)] {
            if let Some((n, d)) = r {
                let mut v = Vec::new();
                put(&mut v, n as u64, 4);
                put(&mut v, d as u64, 4);
                entries.push((tag, 5, v));
            }
        }
        if let Some(u) = unit {
            let mut v = Vec::new();
            put(&mut v, u as u64, 2);
            entries.push((RESOLUTION_UNIT, 3, v));
        }
        let mut out = Vec::new();
        out.extend_from_slice(if big_endian { b"MM" } else { b"II" });
        put(&mut out, if big { 43 } else { 42 }, 2);
        if big {
            put(&mut out, 8, 2);
            put(&mut out, 0, 2);
        }
        let ifd = out.len() as u64 + off as u64;
        put(&mut out, ifd, off);
        let entry_len = 4 + off + field;
        let data_start = ifd as usize + cnt + entries.len() * entry_len + off;
        let mut data = Vec::new();
        put(&mut out, entries.len() as u64, cnt);
        for (tag, kind, value) in &entries {
            put(&mut out, *tag as u64, 2);
            put(&mut out, *kind as u64, 2);
            put(&mut out, 1, off);
            if value.len() <= field {
                let mut v = value.clone();
                v.resize(field, 0);
                out.extend_from_slice(&v);
            } else {
                put(&mut out, (data_start + data.len()) as u64, off);
                data.extend_from_slice(value);
            }
        }
        put(&mut out, 0, off);
        assert_eq!(out.len(), data_start);
        out.extend_from_slice(&data);
        out.extend_from_slice(&[0; 64]);
        out
    }

    fn read(bytes: &[u8]) -> Result<Option<(f64, f64)>, TiffError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slide.tif");
        std::fs::write(&path, bytes).unwrap();
        resolution_mpp(&path)
    }

    fn close(got: Option<(f64, f64)>, want: (f64, f64)) {
        let (x, y) = got.expect("a resolution");
        assert!(
            (x - want.0).abs() < 1e-9 && (y - want.1).abs() < 1e-9,
            "{got:?} != {want:?}"
        );
    }

    #[test]
    fn sniffs_magic_bytes() {
        assert_eq!(sniff(b"II*\0\x08\0\0\0"), Kind::Tiff);
        assert_eq!(sniff(b"MM\0*"), Kind::Tiff);
        assert_eq!(sniff(b"II+\0\x08\0\0\0"), Kind::BigTiff);
        assert_eq!(sniff(b"MM\0+"), Kind::BigTiff);
        assert_eq!(sniff(b"PK\x03\x04rest"), Kind::Zip);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Kind::Png);
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Kind::Jpeg);
        assert_eq!(sniff(b"II"), Kind::Other);
        assert_eq!(sniff(b""), Kind::Other);
        assert_eq!(sniff(b"<html>"), Kind::Other);
    }

    #[test]
    fn reads_centimetres_and_inches_in_every_layout() {
        for big_endian in [false, true] {
            for big in [false, true] {
                // 0.25 um/px: 40000 px/cm; 0.5 um/px: 50800 px/inch.
                let cm = build(
                    big_endian,
                    big,
                    Some((40_000, 1)),
                    Some((80_000, 2)),
                    Some(3),
                );
                close(read(&cm).unwrap(), (0.25, 0.25));
                let inch = build(
                    big_endian,
                    big,
                    Some((50_800, 1)),
                    Some((127_000, 5)),
                    Some(2),
                );
                close(read(&inch).unwrap(), (0.5, 1.0));
                // No unit tag: inches.
                let default = build(big_endian, big, Some((25_400, 1)), Some((25_400, 1)), None);
                close(read(&default).unwrap(), (1.0, 1.0));
            }
        }
    }

    #[test]
    fn no_unit_missing_or_zero_is_none() {
        for big in [false, true] {
            let none = build(false, big, Some((40_000, 1)), Some((40_000, 1)), Some(1));
            assert_eq!(read(&none).unwrap(), None);
            let odd = build(true, big, Some((40_000, 1)), Some((40_000, 1)), Some(7));
            assert_eq!(read(&odd).unwrap(), None);
            let missing = build(false, big, Some((40_000, 1)), None, Some(3));
            assert_eq!(read(&missing).unwrap(), None);
            assert_eq!(read(&build(true, big, None, None, None)).unwrap(), None);
            let zero = build(false, big, Some((0, 1)), Some((40_000, 1)), Some(3));
            assert_eq!(read(&zero).unwrap(), None);
            let no_den = build(true, big, Some((40_000, 0)), Some((40_000, 1)), Some(3));
            assert_eq!(read(&no_den).unwrap(), None);
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_errors_naming_the_file() {
        for big in [false, true] {
            let full = build(false, big, Some((40_000, 1)), Some((40_000, 1)), Some(3));
            // Cut inside the IFD, then inside the rational values (classic keeps them after it).
            let in_ifd = &full[..(if big { 30 } else { 14 })];
            let e = read(in_ifd).unwrap_err();
            assert!(
                matches!(&e, TiffError::Truncated { what, offset, .. } if what == "first IFD" && *offset == if big { 16 } else { 8 }),
                "{e}"
            );
            let msg = e.to_string();
            assert!(
                msg.contains("slide.tif") && msg.contains("truncated TIFF"),
                "{msg}"
            );
            assert_eq!(e.process_exit_code(), ExitCode::UserError);
            if !big {
                let e = read(&full[..full.len() - 64 - 4]).unwrap_err();
                assert!(
                    matches!(&e, TiffError::Truncated { what, .. } if what == "YResolution value"),
                    "{e}"
                );
            }
        }
        assert!(
            matches!(read(b"II*\0").unwrap_err(), TiffError::Truncated { what, .. } if what == "header")
        );
        let e = read(b"PK\x03\x04zipped").unwrap_err();
        assert!(
            e.to_string()
                .contains("not a TIFF file: it is a ZIP archive (first bytes 504b03047a697070)"),
            "{e}"
        );
        let e = read(b"II*\0\0\0\0\0").unwrap_err();
        assert!(e.to_string().contains("first IFD offset 0"), "{e}");
        let mut huge = build(false, true, None, None, None);
        huge[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            read(&huge)
                .unwrap_err()
                .to_string()
                .contains("claims 18446744073709551615 entries")
        );
        let e = resolution_mpp(Path::new("/nonexistent/slide.svs")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot read /nonexistent/slide.svs"),
            "{e}"
        );
        assert_eq!(e.process_exit_code(), ExitCode::UserError);
    }

    #[test]
    fn offsets_past_the_end_are_truncation_not_panics() {
        // Every cut of a valid file, and every single corrupted byte of its header and IFD,
        // reads to a value or an error.
        for big in [false, true] {
            let full = build(true, big, Some((40_000, 1)), Some((40_000, 1)), Some(3));
            for n in 0..full.len() {
                let _ = read(&full[..n]);
            }
            for i in 0..full.len() - 64 {
                let mut bad = full.clone();
                bad[i] ^= 0xFF;
                let _ = read(&bad);
            }
        }
    }
}
