//! MNIST-style IDX files: a 4-byte magic, big-endian u32 dimensions, then the data.

use super::{Archive, ArchiveError, ArchiveFormat, Hashing, Images, RESERVE_MAX, open_error};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The four files, in fingerprint order: train images, train labels, test images, test labels.
const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// One IDX file as read.
struct Idx {
    /// The file's name (with `.gz` if that was read) and path, for messages.
    file: String,
    path: PathBuf,
    dims: Vec<u32>,
    data: Vec<u8>,
}

impl Idx {
    fn bad(&self, reason: String) -> ArchiveError {
        ArchiveError::BadIdx {
            path: self.path.clone(),
            file: self.file.clone(),
            reason,
        }
    }
}

pub(super) fn read(dir: &Path, class_names: Option<Vec<String>>) -> Result<Archive, ArchiveError> {
    let mut hasher = Sha256::new();
    let mut read = |i: usize, ndim: u8| read_file(dir, FILES[i], ndim, &mut hasher);
    let train_images = read(0, 3)?;
    let train_labels = read(1, 1)?;
    let test_images = read(2, 3)?;
    let test_labels = read(3, 1)?;
    let fingerprint = hex::encode(hasher.finalize());

    let (height, width) = (train_images.dims[1], train_images.dims[2]);
    if (test_images.dims[1], test_images.dims[2]) != (height, width) {
        return Err(test_images.bad(format!(
            "images are {}x{} but the training images ({}) are {height}x{width}",
            test_images.dims[1], test_images.dims[2], train_images.file
        )));
    }
    let shape = crate::shard::Shape {
        height,
        width,
        channels: 1,
    };
    shape.fits_header().map_err(|e| train_images.bad(e))?;
    for (images, labels) in [(&train_images, &train_labels), (&test_images, &test_labels)] {
        if labels.dims[0] != images.dims[0] {
            return Err(labels.bad(format!(
                "{} labels for {} images in {}",
                labels.dims[0], images.dims[0], images.file
            )));
        }
    }
    let classes = match class_names {
        Some(names) => {
            for labels in [&train_labels, &test_labels] {
                if let Some(&l) = labels.data.iter().find(|&&l| l as usize >= names.len()) {
                    return Err(
                        labels.bad(format!("label {l} out of range ({} classes)", names.len()))
                    );
                }
            }
            names
        }
        None => {
            let max = train_labels.data.iter().chain(&test_labels.data).max();
            let k = max.map_or(0, |&m| m as usize + 1);
            (0..k).map(|i| i.to_string()).collect()
        }
    };
    Ok(Archive {
        path: dir.to_path_buf(),
        format: ArchiveFormat::Idx,
        fingerprint,
        classes,
        height,
        width,
        channels: 1,
        train: Images {
            pixels: train_images.data,
            labels: train_labels.data,
        },
        test: Images {
            pixels: test_images.data,
            labels: test_labels.data,
        },
        files_seen: FILES.len() as u64,
    })
}

/// An IDX file's bytes, gunzipped or not.
enum Source<'h> {
    Plain(Hashing<'h, File>),
    Gz(GzDecoder<Hashing<'h, File>>),
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Gz(r) => r.read(buf),
        }
    }
}

impl Source<'_> {
    /// Hashes what follows the gzip stream (which gunzip ignores), once it has been read.
    fn finish(self) -> io::Result<()> {
        match self {
            Source::Plain(_) => Ok(()),
            Source::Gz(r) => io::copy(&mut r.into_inner(), &mut io::sink()).map(drop),
        }
    }
}

fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "short",
        0x0C => "int",
        0x0D => "float",
        0x0E => "double",
        _ => "unknown",
    }
}

/// Reads `base` (or `base.gz`, preferred) from `dir`, checks its header and that the data is
/// exactly what the header says, and feeds the file's bytes to `hasher`.
fn read_file(dir: &Path, base: &str, ndim: u8, hasher: &mut Sha256) -> Result<Idx, ArchiveError> {
    let gz_name = format!("{base}.gz");
    let (file_name, gzip) = if dir.join(&gz_name).is_file() {
        (gz_name, true)
    } else if dir.join(base).is_file() {
        (base.to_string(), false)
    } else {
        return Err(ArchiveError::MissingIdx {
            dir: dir.to_path_buf(),
            file: base.to_string(),
        });
    };
    let path = dir.join(&file_name);
    let file = File::open(&path).map_err(|e| open_error(&path, e))?;
    let failed = Cell::new(false);
    let hashing = Hashing {
        inner: file,
        hasher,
        failed: &failed,
    };
    let mut r = IdxReader {
        reader: if gzip {
            Source::Gz(GzDecoder::new(hashing))
        } else {
            Source::Plain(hashing)
        },
        at: IdxAt {
            path,
            file: file_name,
            failed: &failed,
        },
        gzip,
    };
    let dims = r.header(ndim)?;
    r.data(ndim, dims)
}

/// Which IDX file is read, for its errors.
struct IdxAt<'h> {
    path: PathBuf,
    file: String,
    /// Whether reading the file itself failed (rather than its content being bad).
    failed: &'h Cell<bool>,
}

impl IdxAt<'_> {
    fn bad(&self, reason: String) -> ArchiveError {
        ArchiveError::BadIdx {
            path: self.path.clone(),
            file: self.file.clone(),
            reason,
        }
    }

    fn read_error(&self, e: io::Error) -> ArchiveError {
        if self.failed.get() {
            ArchiveError::Io {
                path: self.path.clone(),
                member: None,
                source: e,
            }
        } else {
            self.bad(format!("truncated or corrupt gzip stream: {e}"))
        }
    }
}

/// An IDX file being read: its header, then its data.
struct IdxReader<'h> {
    reader: Source<'h>,
    at: IdxAt<'h>,
    gzip: bool,
}

impl IdxReader<'_> {
    /// Fills `buf`; false when the file ends first.
    fn fill(&mut self, buf: &mut [u8]) -> Result<bool, ArchiveError> {
        match self.reader.read_exact(buf) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !self.at.failed.get() => {
                Ok(false)
            }
            Err(e) => Err(self.at.read_error(e)),
        }
    }

    /// The header's dimensions, once its magic says unsigned bytes in `ndim` dimensions.
    fn header(&mut self, ndim: u8) -> Result<Vec<u32>, ArchiveError> {
        let mut magic = [0u8; 4];
        if !self.fill(&mut magic)? {
            return Err(self.at.bad("too short for an IDX header".into()));
        }
        if magic[..2] != [0, 0] {
            let hint = if magic[..2] == [0x1f, 0x8b] && !self.gzip {
                " (it is gzip-compressed: name it .gz)"
            } else {
                ""
            };
            return Err(self.at.bad(format!(
                "not an IDX file: magic {:02x} {:02x} {:02x} {:02x}, expected 00 00 08 {ndim:02x}{hint}",
                magic[0], magic[1], magic[2], magic[3]
            )));
        }
        if magic[2] != 0x08 {
            return Err(self.at.bad(format!(
                "IDX data type 0x{:02x} ({}) is not supported, only 0x08 (unsigned byte)",
                magic[2],
                type_name(magic[2])
            )));
        }
        if magic[3] != ndim {
            let expected = if ndim == 3 {
                "3 (images, rows, columns)"
            } else {
                "1 (labels)"
            };
            return Err(self
                .at
                .bad(format!("has {} dimensions, expected {expected}", magic[3])));
        }
        let mut raw = vec![0u8; 4 * ndim as usize];
        if !self.fill(&mut raw)? {
            return Err(self.at.bad("truncated in the IDX header".into()));
        }
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    /// The data after the header, which must be exactly what its `dims` say, read to the end
    /// of the file.
    fn data(self, ndim: u8, dims: Vec<u32>) -> Result<Idx, ArchiveError> {
        let IdxReader { mut reader, at, .. } = self;
        let what = if ndim == 3 { "pixels" } else { "labels" };
        let expected = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or_else(|| at.bad(format!("header dimensions {dims:?} are too large")))?;
        // Read one byte past what the header says to tell trailing bytes; count any further
        // ones without keeping them.
        let mut data = Vec::with_capacity(expected.min(RESERVE_MAX) as usize);
        reader
            .by_ref()
            .take(expected + 1)
            .read_to_end(&mut data)
            .map_err(|e| at.read_error(e))?;
        let mut held = data.len() as u64;
        // To the end: checks the gzip trailer and hashes the whole file.
        held += io::copy(&mut reader, &mut io::sink()).map_err(|e| at.read_error(e))?;
        reader.finish().map_err(|e| at.read_error(e))?;
        if held != expected {
            let says = if ndim == 3 {
                format!("{} images of {}x{}", dims[0], dims[1], dims[2])
            } else {
                format!("{} labels", dims[0])
            };
            let verdict = if held < expected {
                "truncated"
            } else {
                "trailing bytes"
            };
            return Err(at.bad(format!(
                "header says {says} but the file holds {held} bytes of {what} ({verdict})"
            )));
        }
        Ok(Idx {
            file: at.file,
            path: at.path,
            dims,
            data,
        })
    }
}
