//! The shard format: fixed-size image records behind a versioned header.
//!
//! A shard is one object holding many images of one split, so that a worker reads a dataset with
//! a few large sequential reads and no image decoding. Layout (all integers little-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0  magic        b"IDCSHARD"
//!   8  version      u16   (FORMAT_VERSION; version 1 is still read)
//!  10  header_len   u16   (64)
//!  12  record_len   u32   (16 + height * width * channels)
//!  16  count        u64   number of records
//!  24  height u16, width u16, channels u16
//!  30  classes      u16   number of classes (version 1: reserved 0, meaning the two IDC classes)
//!  32  split        u8    (0 train, 1 val, 2 test), then 31 reserved zero bytes
//! record, record_len bytes, `count` times:
//!   0  label        u8    (class index; IDC: 0 no IDC, 1 IDC)
//!   1  flags        u8    (bit 0: padded from a smaller edge patch; bit 1: label unknown,
//!                          in the input of a prediction)
//!   2  reserved     u16
//!   4  patient      u32   (IDC: the patient; archives: 0)
//!   8  x            u32   (IDC: the patch's x; archives: the image's index in its official set)
//!  12  y            u32   (IDC: the patch's y; archives: 0 for the training set, 1 for test)
//!  16  pixels       height * width * channels u8, row-major HWC (RGB, or one gray channel)
//! ```
//!
//! Version 1 is the same layout fixed at 50x50x3 and two classes. Integrity is checked with the
//! SHA-256 of the whole shard, kept in the dataset manifest.

use crate::{CHANNELS, PATCH_SIZE};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    /// The code stored in shard headers.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(code as usize).copied()
    }
}

impl crate::choice::Choice for Split {
    const ALL: &'static [Self] = &Split::ALL;
    fn name(self) -> &'static str {
        self.as_str()
    }
}
crate::choice_names!(Split);

/// Version of the shard layout above; bumped on any incompatible change.
pub const FORMAT_VERSION: u16 = 2;
/// The versions this build reads.
pub const READABLE_VERSIONS: [u16; 2] = [1, 2];
/// Magic bytes that open every shard.
pub const MAGIC: &[u8; 8] = b"IDCSHARD";
/// Length of the header.
pub const HEADER_LEN: usize = 64;
/// Length of a record's fixed fields before the pixels.
pub const RECORD_META_LEN: usize = 16;
/// Record flag: the patch was smaller than 50x50 and was padded.
pub const FLAG_PADDED: u8 = 1;
/// Record flag: the image's label is not known (its label byte is 0); only prediction inputs
/// hold such records.
pub const FLAG_UNLABELED: u8 = 2;

/// The shape of every image of a dataset: height, width, channels (HWC uint8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Shape {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

impl Shape {
    /// A 50x50 RGB IDC patch.
    pub const IDC: Shape = Shape {
        height: PATCH_SIZE as u32,
        width: PATCH_SIZE as u32,
        channels: CHANNELS as u32,
    };

    /// Bytes of one image's pixels.
    pub fn pixel_bytes(self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }

    /// Bytes of one record of this shape.
    pub fn record_len(self) -> usize {
        RECORD_META_LEN + self.pixel_bytes()
    }

    /// Whether a shard header can hold this shape (16-bit sizes); why not, naming the size.
    pub fn fits_header(self) -> Result<(), String> {
        for (what, d) in [
            ("height", self.height),
            ("width", self.width),
            ("channels", self.channels),
        ] {
            if d > u16::MAX.into() {
                return Err(format!(
                    "image {what} {d} is more than a shard header holds ({})",
                    u16::MAX
                ));
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}x{}", self.height, self.width, self.channels)
    }
}

/// What every record of a shard is: its image shape and how many classes its labels index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub shape: Shape,
    pub classes: u16,
}

impl Layout {
    /// The IDC layout: 50x50 RGB patches, two classes.
    pub const IDC: Layout = Layout {
        shape: Shape::IDC,
        classes: 2,
    };

    /// Bytes of one record.
    pub fn record_len(self) -> usize {
        self.shape.record_len()
    }
}

/// Why a shard could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("not an idc shard (bad magic bytes)")]
    BadMagic,
    #[error(
        "shard format version {found} is not supported (this build reads versions 1 to {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u16 },
    #[error("shard header is inconsistent: {0}")]
    BadHeader(String),
    #[error("shard is truncated: header says {expected} bytes, object has {found}")]
    Truncated { expected: usize, found: usize },
    #[error("checksum mismatch: expected sha256 {expected}, found {found}")]
    Checksum { expected: String, found: String },
    #[error("record {record} has label {label}, but the shard has {classes} classes")]
    BadLabel {
        record: usize,
        label: u8,
        classes: u16,
    },
}

/// The fixed fields of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub label: u8,
    pub flags: u8,
    pub patient: u32,
    pub x: u32,
    pub y: u32,
}

/// One record, borrowed from a shard buffer.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub meta: RecordMeta,
    /// HWC pixels of the shard's shape.
    pub pixels: &'a [u8],
}

/// Builds a shard in memory.
pub struct ShardWriter {
    buf: Vec<u8>,
    count: u64,
    layout: Layout,
}

impl ShardWriter {
    /// A writer for a shard of `split` with records of `layout`, with room for `capacity`.
    pub fn new(split: Split, layout: Layout, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity * layout.record_len());
        buf.extend_from_slice(&header(split, layout, 0));
        Self {
            buf,
            count: 0,
            layout,
        }
    }

    /// Appends one record. `pixels` must hold exactly one image of the layout's shape.
    pub fn push(&mut self, meta: RecordMeta, pixels: &[u8]) {
        let start = self.buf.len();
        self.buf.resize(start + self.layout.record_len(), 0);
        write_record(&mut self.buf[start..], meta, pixels);
        self.count += 1;
    }

    /// Number of records so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The finished shard bytes and their SHA-256 (hex).
    pub fn finish(self) -> (Vec<u8>, String) {
        finish_buffer(self.buf, self.count)
    }
}

/// The header of a shard of `split` holding `count` records of `layout`.
pub fn header(split: Split, layout: Layout, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[12..16].copy_from_slice(&(layout.record_len() as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    let s = layout.shape;
    for (i, v) in [
        s.height as u16,
        s.width as u16,
        s.channels as u16,
        layout.classes,
    ]
    .into_iter()
    .enumerate()
    {
        h[24 + 2 * i..26 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[32] = split.code();
    h
}

/// Encodes one record into `dst` (exactly one record's length: 16 bytes and the pixels); lets
/// callers fill a shard's record slots in parallel.
pub fn write_record(dst: &mut [u8], meta: RecordMeta, pixels: &[u8]) {
    assert_eq!(
        dst.len(),
        RECORD_META_LEN + pixels.len(),
        "a record slot holds the fixed fields and exactly one image"
    );
    dst[0] = meta.label;
    dst[1] = meta.flags;
    dst[2..4].fill(0);
    dst[4..8].copy_from_slice(&meta.patient.to_le_bytes());
    dst[8..12].copy_from_slice(&meta.x.to_le_bytes());
    dst[12..16].copy_from_slice(&meta.y.to_le_bytes());
    dst[RECORD_META_LEN..].copy_from_slice(pixels);
}

/// Completes a shard buffer (header followed by `count` records of the header's length): sets
/// the count, returns the bytes and their SHA-256 (hex).
pub fn finish_buffer(mut buf: Vec<u8>, count: u64) -> (Vec<u8>, String) {
    let record_len = u32::from_le_bytes(buf[12..16].try_into().expect("a header")) as usize;
    assert_eq!(
        buf.len(),
        HEADER_LEN + count as usize * record_len,
        "buffer holds the header and `count` records"
    );
    buf[16..24].copy_from_slice(&count.to_le_bytes());
    let digest = sha256_hex(&buf);
    (buf, digest)
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A parsed, validated shard over a byte buffer.
#[derive(Debug)]
pub struct ShardReader<B> {
    buf: B,
    count: usize,
    split: Split,
    version: u16,
    layout: Layout,
}

impl<B: AsRef<[u8]>> ShardReader<B> {
    /// Checks `buf` against the expected SHA-256, then parses it.
    pub fn open_verified(buf: B, expected_sha256: &str) -> Result<Self, ShardError> {
        let found = sha256_hex(buf.as_ref());
        if !found.eq_ignore_ascii_case(expected_sha256) {
            return Err(ShardError::Checksum {
                expected: expected_sha256.to_string(),
                found,
            });
        }
        Self::open(buf)
    }

    /// Parses the header of `buf`, checks that every record is present and every label is one
    /// of the shard's classes.
    pub fn open(buf: B) -> Result<Self, ShardError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN || &b[0..8] != MAGIC {
            return Err(ShardError::BadMagic);
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let version = u16_at(8);
        if !READABLE_VERSIONS.contains(&version) {
            return Err(ShardError::UnsupportedVersion { found: version });
        }
        let header_len = u16_at(10) as usize;
        let record_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
        let count = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        let shape = Shape {
            height: u16_at(24) as u32,
            width: u16_at(26) as u32,
            channels: u16_at(28) as u32,
        };
        let layout = if version == 1 {
            if shape != Shape::IDC {
                return Err(ShardError::BadHeader(format!(
                    "a version 1 shard holds 50x50x3 patches, this one says {shape}"
                )));
            }
            Layout::IDC
        } else {
            Layout {
                shape,
                classes: u16_at(30),
            }
        };
        if header_len != HEADER_LEN || record_len != layout.record_len() {
            return Err(ShardError::BadHeader(format!(
                "header_len {header_len}, record_len {record_len} for {shape} images"
            )));
        }
        if shape.pixel_bytes() == 0 || !(2..=256).contains(&layout.classes) {
            return Err(ShardError::BadHeader(format!(
                "{shape} images of {} classes",
                layout.classes
            )));
        }
        let split = Split::from_code(b[32])
            .ok_or_else(|| ShardError::BadHeader(format!("split code {}", b[32])))?;
        let expected = count
            .checked_mul(record_len)
            .and_then(|n| n.checked_add(HEADER_LEN))
            .ok_or_else(|| ShardError::BadHeader(format!("record count {count}")))?;
        if b.len() != expected {
            return Err(ShardError::Truncated {
                expected,
                found: b.len(),
            });
        }
        for record in 0..count {
            let label = b[HEADER_LEN + record * record_len];
            if label as u16 >= layout.classes {
                return Err(ShardError::BadLabel {
                    record,
                    label,
                    classes: layout.classes,
                });
            }
        }
        Ok(Self {
            buf,
            count,
            split,
            version,
            layout,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the shard holds no record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The split this shard belongs to.
    pub fn split(&self) -> Split {
        self.split
    }

    /// The format version it was written in.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The shape of its images and the number of classes.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Record `i`.
    pub fn record(&self, i: usize) -> Record<'_> {
        assert!(
            i < self.count,
            "record {i} out of range ({} records)",
            self.count
        );
        let len = self.layout.record_len();
        let r = &self.buf.as_ref()[HEADER_LEN + i * len..][..len];
        let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
        Record {
            meta: RecordMeta {
                label: r[0],
                flags: r[1],
                patient: u32_at(4),
                x: u32_at(8),
                y: u32_at(12),
            },
            pixels: &r[RECORD_META_LEN..],
        }
    }

    /// Every record in order.
    pub fn records(&self) -> impl Iterator<Item = Record<'_>> {
        (0..self.count).map(|i| self.record(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, String) {
        let mut w = ShardWriter::new(Split::Test, Layout::IDC, 2);
        let a: Vec<u8> = (0..crate::PATCH_BYTES).map(|i| (i % 251) as u8).collect();
        let b = vec![7u8; crate::PATCH_BYTES];
        w.push(
            RecordMeta {
                label: 1,
                flags: FLAG_PADDED,
                patient: 10253,
                x: 1351,
                y: 2001,
            },
            &a,
        );
        w.push(
            RecordMeta {
                label: 0,
                flags: 0,
                patient: 8863,
                x: 1,
                y: 51,
            },
            &b,
        );
        w.finish()
    }

    #[test]
    fn round_trip() {
        let (bytes, sha) = sample();
        assert_eq!(bytes.len(), HEADER_LEN + 2 * Layout::IDC.record_len());
        let r = ShardReader::open_verified(&bytes[..], &sha).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.split(), Split::Test);
        let first = r.record(0);
        assert_eq!(
            first.meta,
            RecordMeta {
                label: 1,
                flags: FLAG_PADDED,
                patient: 10253,
                x: 1351,
                y: 2001
            }
        );
        assert_eq!(first.pixels[260], (260 % 251) as u8);
        assert!(r.record(1).pixels.iter().all(|&p| p == 7));
    }

    #[test]
    fn detects_corruption() {
        let (mut bytes, sha) = sample();
        bytes[HEADER_LEN + 100] ^= 1;
        assert!(matches!(
            ShardReader::open_verified(&bytes[..], &sha),
            Err(ShardError::Checksum { .. })
        ));
        let (bytes, _) = sample();
        assert!(matches!(
            ShardReader::open(&bytes[..bytes.len() - 1]),
            Err(ShardError::Truncated { .. })
        ));
        assert_eq!(
            ShardReader::open(&b"PNG"[..]).unwrap_err(),
            ShardError::BadMagic
        );
        let (mut bytes, _) = sample();
        bytes[8] = 9;
        assert_eq!(
            ShardReader::open(&bytes[..]).unwrap_err(),
            ShardError::UnsupportedVersion { found: 9 }
        );
    }

    #[test]
    fn other_shapes_and_class_counts() {
        let layout = Layout {
            shape: Shape {
                height: 28,
                width: 28,
                channels: 1,
            },
            classes: 10,
        };
        let mut w = ShardWriter::new(Split::Train, layout, 3);
        for label in [9u8, 0, 4] {
            let px = vec![label * 20; 784];
            w.push(
                RecordMeta {
                    label,
                    flags: 0,
                    patient: 0,
                    x: label as u32,
                    y: 0,
                },
                &px,
            );
        }
        let (bytes, sha) = w.finish();
        assert_eq!(bytes.len(), HEADER_LEN + 3 * (16 + 784));
        let r = ShardReader::open_verified(&bytes[..], &sha).unwrap();
        assert_eq!((r.version(), r.layout()), (FORMAT_VERSION, layout));
        assert_eq!(r.record(0).meta.label, 9);
        assert_eq!(r.record(2).pixels, &[80u8; 784][..]);

        // A label beyond the class count is refused, naming the record.
        let mut bad = bytes.clone();
        bad[HEADER_LEN + 16 + 784] = 10;
        assert_eq!(
            ShardReader::open(&bad[..]).unwrap_err(),
            ShardError::BadLabel {
                record: 1,
                label: 10,
                classes: 10
            }
        );
        // A record length that disagrees with the shape.
        let mut bad = bytes.clone();
        bad[24] = 27;
        assert!(matches!(
            ShardReader::open(&bad[..]),
            Err(ShardError::BadHeader(_))
        ));
    }

    #[test]
    fn version_1_shards_still_read() {
        // A version 1 shard as the first idcctl wrote it: classes field reserved (0).
        let (mut bytes, _) = sample();
        bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
        bytes[30..32].fill(0);
        let r = ShardReader::open(&bytes[..]).unwrap();
        assert_eq!((r.version(), r.layout()), (1, Layout::IDC));
        assert_eq!(r.record(0).meta.patient, 10253);
        // Version 1 is 50x50x3 only.
        bytes[24] = 32;
        assert!(matches!(
            ShardReader::open(&bytes[..]),
            Err(ShardError::BadHeader(_))
        ));
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;

        /// A shard read back is read whole without panicking.
        fn read(b: &[u8]) {
            if let Ok(r) = ShardReader::open(b) {
                let (layout, split) = (r.layout(), r.split());
                for rec in r.records() {
                    assert_eq!(rec.pixels.len(), layout.shape.pixel_bytes());
                    assert!((rec.meta.label as u16) < layout.classes, "{split:?}");
                }
            }
        }

        /// A valid header of `layout` with `count` records, and whatever follows it.
        fn with_header(layout: Layout, count: u64, rest: Vec<u8>) -> Vec<u8> {
            let mut b = header(Split::Val, layout, count).to_vec();
            b.extend(rest);
            b
        }

        proptest! {
            #![proptest_config(config(256))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read(&b);
            }

            #[test]
            fn corrupted_shards(b in corrupted(sample().0)) {
                read(&b);
                let (_, sha) = sample();
                prop_assert!(ShardReader::open_verified(&b[..], &sha).is_err() || b == sample().0);
            }

            #[test]
            fn hostile_headers(
                h in 0u16..8, w in 0u16..8, c in 0u16..5, classes in any::<u16>(),
                count in prop_oneof![0u64..4, any::<u64>()], rest in bytes(600),
            ) {
                let layout = Layout {
                    shape: Shape { height: h.into(), width: w.into(), channels: c.into() },
                    classes,
                };
                read(&with_header(layout, count, rest));
            }
        }
    }
}
