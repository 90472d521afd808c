//! The shard format: fixed-size patch records behind a versioned header.
//!
//! A shard is one object holding many patches of one split, so that a worker reads a dataset with
//! a few large sequential reads and no image decoding. Layout (all integers little-endian):
//!
//! ```text
//! header, 64 bytes:
//!   0  magic        b"IDCSHARD"
//!   8  version      u16   (FORMAT_VERSION)
//!  10  header_len   u16   (64)
//!  12  record_len   u32   (RECORD_LEN)
//!  16  count        u64   number of records
//!  24  height       u16, width u16, channels u16, reserved u16
//!  32  split        u8    (0 train, 1 val, 2 test), then 31 reserved zero bytes
//! record, RECORD_LEN bytes, `count` times:
//!   0  label        u8    (0 no IDC, 1 IDC)
//!   1  flags        u8    (bit 0: padded from a smaller edge patch)
//!   2  reserved     u16
//!   4  patient      u32
//!   8  x            u32
//!  12  y            u32
//!  16  pixels       50*50*3 u8, row-major HWC, RGB
//! ```
//!
//! Integrity is checked with the SHA-256 of the whole shard, kept in the dataset manifest.

use crate::dataset::split::Split;
use crate::{CHANNELS, PATCH_BYTES, PATCH_SIZE};
use sha2::{Digest, Sha256};

/// Version of the shard layout above; bumped on any incompatible change.
pub const FORMAT_VERSION: u16 = 1;
/// Magic bytes that open every shard.
pub const MAGIC: &[u8; 8] = b"IDCSHARD";
/// Length of the header.
pub const HEADER_LEN: usize = 64;
/// Length of a record's fixed fields before the pixels.
pub const RECORD_META_LEN: usize = 16;
/// Length of one record.
pub const RECORD_LEN: usize = RECORD_META_LEN + PATCH_BYTES;
/// Record flag: the patch was smaller than 50x50 and was padded.
pub const FLAG_PADDED: u8 = 1;

/// Why a shard could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShardError {
    #[error("not an idc shard (bad magic bytes)")]
    BadMagic,
    #[error(
        "shard format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion { found: u16 },
    #[error("shard header is inconsistent: {0}")]
    BadHeader(String),
    #[error("shard is truncated: header says {expected} bytes, object has {found}")]
    Truncated { expected: usize, found: usize },
    #[error("checksum mismatch: expected sha256 {expected}, found {found}")]
    Checksum { expected: String, found: String },
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
    /// 50x50x3 HWC RGB pixels.
    pub pixels: &'a [u8],
}

/// Builds a shard in memory.
pub struct ShardWriter {
    buf: Vec<u8>,
    count: u64,
}

impl ShardWriter {
    /// A writer for a shard of `split` with room for `capacity` records.
    pub fn new(split: Split, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + capacity * RECORD_LEN);
        buf.extend_from_slice(&header(split, 0));
        Self { buf, count: 0 }
    }

    /// Appends one record. `pixels` must hold exactly 50x50x3 bytes.
    pub fn push(&mut self, meta: RecordMeta, pixels: &[u8]) {
        let start = self.buf.len();
        self.buf.resize(start + RECORD_LEN, 0);
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

/// The header of a shard of `split` holding `count` records.
pub fn header(split: Split, count: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&(HEADER_LEN as u16).to_le_bytes());
    h[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    for (i, v) in [PATCH_SIZE as u16, PATCH_SIZE as u16, CHANNELS as u16]
        .into_iter()
        .enumerate()
    {
        h[24 + 2 * i..26 + 2 * i].copy_from_slice(&v.to_le_bytes());
    }
    h[32] = split.code();
    h
}

/// Encodes one record into `dst` (exactly [`RECORD_LEN`] bytes); lets callers fill a shard's
/// record slots in parallel.
pub fn write_record(dst: &mut [u8], meta: RecordMeta, pixels: &[u8]) {
    assert_eq!(dst.len(), RECORD_LEN, "a record slot is RECORD_LEN bytes");
    assert_eq!(
        pixels.len(),
        PATCH_BYTES,
        "a record holds exactly one 50x50 RGB patch"
    );
    dst[0] = meta.label;
    dst[1] = meta.flags;
    dst[2..4].fill(0);
    dst[4..8].copy_from_slice(&meta.patient.to_le_bytes());
    dst[8..12].copy_from_slice(&meta.x.to_le_bytes());
    dst[12..16].copy_from_slice(&meta.y.to_le_bytes());
    dst[RECORD_META_LEN..].copy_from_slice(pixels);
}

/// Completes a shard buffer (header followed by `count` records): sets the count, returns the
/// bytes and their SHA-256 (hex).
pub fn finish_buffer(mut buf: Vec<u8>, count: u64) -> (Vec<u8>, String) {
    assert_eq!(
        buf.len(),
        HEADER_LEN + count as usize * RECORD_LEN,
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

    /// Parses the header of `buf` and checks that every record is present.
    pub fn open(buf: B) -> Result<Self, ShardError> {
        let b = buf.as_ref();
        if b.len() < HEADER_LEN || &b[0..8] != MAGIC {
            return Err(ShardError::BadMagic);
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let version = u16_at(8);
        if version != FORMAT_VERSION {
            return Err(ShardError::UnsupportedVersion { found: version });
        }
        let header_len = u16_at(10) as usize;
        let record_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
        let count = u64::from_le_bytes(b[16..24].try_into().unwrap()) as usize;
        let dims = (
            u16_at(24) as usize,
            u16_at(26) as usize,
            u16_at(28) as usize,
        );
        if header_len != HEADER_LEN || record_len != RECORD_LEN {
            return Err(ShardError::BadHeader(format!(
                "header_len {header_len}, record_len {record_len}"
            )));
        }
        if dims != (PATCH_SIZE, PATCH_SIZE, CHANNELS) {
            return Err(ShardError::BadHeader(format!("image dims {dims:?}")));
        }
        let split = Split::from_code(b[32])
            .ok_or_else(|| ShardError::BadHeader(format!("split code {}", b[32])))?;
        let expected = HEADER_LEN + count * RECORD_LEN;
        if b.len() != expected {
            return Err(ShardError::Truncated {
                expected,
                found: b.len(),
            });
        }
        Ok(Self { buf, count, split })
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

    /// Record `i`.
    pub fn record(&self, i: usize) -> Record<'_> {
        assert!(
            i < self.count,
            "record {i} out of range ({} records)",
            self.count
        );
        let r = &self.buf.as_ref()[HEADER_LEN + i * RECORD_LEN..][..RECORD_LEN];
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
        let mut w = ShardWriter::new(Split::Test, 2);
        let a: Vec<u8> = (0..PATCH_BYTES).map(|i| (i % 251) as u8).collect();
        let b = vec![7u8; PATCH_BYTES];
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
        assert_eq!(bytes.len(), HEADER_LEN + 2 * RECORD_LEN);
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
}
