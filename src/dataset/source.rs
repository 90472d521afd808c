//! Reading a dataset as downloaded: the extracted folder, or the zip read in place.
//!
//! Listing parses every name, reports image files that are not patches, counts files that are no
//! images and macOS litter as ignored, and counts each patch once when the download holds the
//! tree twice (`IDC_regular_ps50_idx5/` beside the patient folders).

pub use super::manifest::{Rejected, SourceKind};
use super::name::{PatchName, parse_path, parse_predict_path};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One patch found in the source.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its patient, position and class (0 when the label is unknown).
    pub name: PatchName,
    /// The label, when the name carries one (always, in the Kaggle layout).
    pub label: Option<u8>,
    /// Path inside the source, `/`-separated, for messages.
    pub rel: String,
    loc: Loc,
}

#[derive(Debug, Clone)]
enum Loc {
    File,
    Zip {
        offset: u64,
        compressed: u64,
        size: u64,
        deflated: bool,
        crc32: u32,
    },
}

/// Why a source cannot be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {0} does not exist")]
    NotFound(PathBuf),
    #[error("cannot read source {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a readable zip archive: {reason}")]
    BadZip { path: PathBuf, reason: String },
    #[error(
        "no patches found in {0}: expected IDC_regular_ps50_idx5/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png"
    )]
    Empty(PathBuf),
    #[error(
        "no patches found in {0}: expected files named <patient>_idx5_x<X>_y<Y>[_class<C>].png, in any folders"
    )]
    NothingToPredict(PathBuf),
}

/// An opened source with its patch listing.
#[derive(Debug)]
pub struct Source {
    pub kind: SourceKind,
    pub path: PathBuf,
    /// Every patch, once, sorted by patient, x, y, class.
    pub entries: Vec<Entry>,
    /// Image files whose names are not patch names.
    pub rejected: Vec<Rejected>,
    /// Files that are no images (a README, a checksum list) or macOS litter (`.DS_Store`,
    /// `__MACOSX/`, `._*`): counted, neither staged nor reported as skipped.
    pub ignored: u64,
    /// Files seen (patches, duplicates, rejected and ignored).
    pub files_seen: u64,
    /// Patches found a second time (a duplicated tree) and counted once.
    pub duplicates: u64,
    /// SHA-256 over every file's path and size (and CRC for zips): identifies the download.
    pub fingerprint: String,
    zip: Option<File>,
}

/// Which file names a source's patches have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Names {
    /// The Kaggle download: `<patient>/<class>/<patient>_idx5_x<X>_y<Y>_class<C>.png`.
    Kaggle,
    /// Images to predict: patch names with or without `_class<C>`, in any folders.
    Predict,
}

impl Source {
    /// Opens a folder or a `.zip` file in the Kaggle layout and lists its patches.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        Self::open_with(path, Names::Kaggle)
    }

    /// Opens a folder or a `.zip` file whose patches are named as `names` says.
    pub fn open_with(path: &Path, names: Names) -> Result<Self, SourceError> {
        let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound(path.to_path_buf()),
            _ => SourceError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
        let (kind, files, zip) = if meta.is_dir() {
            (SourceKind::Dir, list_dir(path)?, None)
        } else {
            let (files, file) = list_zip(path)?;
            (SourceKind::Zip, files, Some(file))
        };
        let mut hasher = Sha256::new();
        hasher.update(format!("{kind:?}\n"));
        for f in &files {
            hasher.update(format!("{}\t{}\t{}\n", f.0, f.1, f.2.crc32()));
        }
        let fingerprint = hex::encode(hasher.finalize());
        let files_seen = files.len() as u64;

        let mut rejected = vec![];
        let mut ignored = 0;
        let mut found = vec![];
        for (rel, _size, loc) in files {
            if is_ignorable(&rel) {
                ignored += 1;
                continue;
            }
            let parsed = match names {
                Names::Kaggle => parse_path(&rel).map(|n| (n, Some(n.class))),
                Names::Predict => parse_predict_path(&rel),
            };
            match parsed {
                Ok((name, label)) => found.push(Entry {
                    name,
                    label,
                    rel,
                    loc,
                }),
                Err(e) => rejected.push(Rejected {
                    path: rel,
                    reason: e.to_string(),
                }),
            }
        }
        // The first copy in path order wins: patient folders sort before IDC_regular_ps50_idx5/.
        found.sort_by(|a, b| (a.name, a.label, &a.rel).cmp(&(b.name, b.label, &b.rel)));
        let before = found.len();
        found.dedup_by(|b, a| (a.name, a.label) == (b.name, b.label));
        let duplicates = (before - found.len()) as u64;
        if found.is_empty() {
            return Err(match names {
                Names::Kaggle => SourceError::Empty(path.to_path_buf()),
                Names::Predict => SourceError::NothingToPredict(path.to_path_buf()),
            });
        }
        Ok(Self {
            kind,
            path: path.to_path_buf(),
            entries: found,
            rejected,
            ignored,
            files_seen,
            duplicates,
            fingerprint,
            zip,
        })
    }

    /// Reads the bytes of one patch file. Safe to call from many threads at once.
    pub fn read(&self, entry: &Entry) -> Result<Vec<u8>, String> {
        match entry.loc {
            Loc::File => {
                std::fs::read(self.path.join(&entry.rel)).map_err(|e| format!("cannot read: {e}"))
            }
            Loc::Zip {
                offset,
                compressed,
                size,
                deflated,
                crc32,
            } => {
                let file = self.zip.as_ref().expect("zip sources keep their file open");
                let mut raw = vec![0u8; compressed as usize];
                file.read_exact_at(&mut raw, offset)
                    .map_err(|e| format!("cannot read from zip: {e}"))?;
                let data = if deflated {
                    let mut out = Vec::with_capacity(size as usize);
                    flate2::read::DeflateDecoder::new(&raw[..])
                        .read_to_end(&mut out)
                        .map_err(|e| format!("corrupt zip entry: {e}"))?;
                    out
                } else {
                    raw
                };
                if crc32fast::hash(&data) != crc32 {
                    return Err("corrupt zip entry: CRC-32 mismatch".into());
                }
                Ok(data)
            }
        }
    }
}

impl Loc {
    fn crc32(&self) -> u32 {
        match self {
            Loc::File => 0,
            Loc::Zip { crc32, .. } => *crc32,
        }
    }
}

type Listed = (String, u64, Loc);

/// Whether a listed file is left out without a word: what macOS writes into folders and zips
/// (`.DS_Store`, `__MACOSX/`, `._` resource forks) and anything that is not an image file.
fn is_ignorable(rel: &str) -> bool {
    let file = rel.rsplit('/').next().unwrap_or(rel);
    let ext = file.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    let image = matches!(
        ext.as_deref(),
        Some("png" | "jpg" | "jpeg" | "tif" | "tiff" | "bmp" | "gif" | "webp")
    );
    rel.split('/').any(|c| c == "__MACOSX")
        || file == ".DS_Store"
        || file.starts_with("._")
        || !image
}

fn list_dir(root: &Path) -> Result<Vec<Listed>, SourceError> {
    let mut out = vec![];
    for item in walkdir::WalkDir::new(root).sort_by_file_name() {
        let item = item.map_err(|e| SourceError::Io {
            path: e.path().unwrap_or(root).to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("filesystem loop")),
        })?;
        if !item.file_type().is_file() {
            continue;
        }
        let rel = item.path().strip_prefix(root).unwrap_or(item.path());
        let rel = rel.to_string_lossy().replace('\\', "/");
        let size = item.metadata().map(|m| m.len()).unwrap_or(0);
        out.push((rel, size, Loc::File));
    }
    Ok(out)
}

fn list_zip(path: &Path) -> Result<(Vec<Listed>, File), SourceError> {
    let io = |e| SourceError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let bad = |e: zip::result::ZipError| SourceError::BadZip {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let file = File::open(path).map_err(io)?;
    let mut archive = zip::ZipArchive::new(file.try_clone().map_err(io)?).map_err(bad)?;
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(bad)?;
        if f.is_dir() {
            continue;
        }
        let deflated = match f.compression() {
            zip::CompressionMethod::Stored => false,
            zip::CompressionMethod::Deflated => true,
            other => {
                return Err(SourceError::BadZip {
                    path: path.to_path_buf(),
                    reason: format!(
                        "{} uses compression {other:?}; only stored and deflate are supported",
                        f.name()
                    ),
                });
            }
        };
        let loc = Loc::Zip {
            offset: f.data_start(),
            compressed: f.compressed_size(),
            size: f.size(),
            deflated,
            crc32: f.crc32(),
        };
        out.push((f.name().to_string(), f.size(), loc));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn litter_and_non_images_are_ignored_not_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let patch = "IDC_regular_ps50_idx5/10253/0/10253_idx5_x1_y1_class0.png";
        for f in [
            patch,
            ".DS_Store",
            "IDC_regular_ps50_idx5/10253/.DS_Store",
            "__MACOSX/IDC_regular_ps50_idx5/10253/0/._10253_idx5_x1_y1_class0.png",
            "IDC_regular_ps50_idx5/10253/0/._10253_idx5_x1_y1_class0.png",
            "README.md",
            "IDC_regular_ps50_idx5/10253/0/notes.txt",
            "IDC_regular_ps50_idx5/10253/0/holiday.png",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        let src = Source::open(root).unwrap();
        assert_eq!(src.entries.len(), 1);
        assert_eq!(src.files_seen, 8);
        assert_eq!(src.ignored, 6);
        assert_eq!(
            src.rejected
                .iter()
                .map(|r| r.path.as_str())
                .collect::<Vec<_>>(),
            ["IDC_regular_ps50_idx5/10253/0/holiday.png"],
            "an image that is not a patch is still reported"
        );
    }
}
