//! Both CIFAR-10 layouts, read in one pass over the `.tar.gz`.

use super::{Archive, ArchiveError, ArchiveFormat, Hashing, Images, RESERVE_MAX, open_error};
use crate::pickle;
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

const PY_DIR: &str = "cifar-10-batches-py";
const BIN_DIR: &str = "cifar-10-batches-bin";
/// Bytes of one CHW image: 1024 R, 1024 G, 1024 B.
const ROW: usize = 32 * 32 * 3;
/// Batches in source order: data_batch_1..5 (train), then test_batch.
const BATCHES: [&str; 6] = [
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    Python,
    Binary,
}

impl Layout {
    fn dir(self) -> &'static str {
        match self {
            Layout::Python => PY_DIR,
            Layout::Binary => BIN_DIR,
        }
    }

    fn batch_member(self, i: usize) -> String {
        match self {
            Layout::Python => format!("{PY_DIR}/{}", BATCHES[i]),
            Layout::Binary => format!("{BIN_DIR}/{}.bin", BATCHES[i]),
        }
    }

    fn meta_member(self) -> String {
        match self {
            Layout::Python => format!("{PY_DIR}/batches.meta"),
            Layout::Binary => format!("{BIN_DIR}/batches.meta.txt"),
        }
    }
}

/// What a member of either layout is to us.
enum Role {
    Batch(usize),
    Meta,
}

fn role(layout: Layout, name: &str) -> Option<Role> {
    if name == layout.meta_member() {
        return Some(Role::Meta);
    }
    (0..BATCHES.len())
        .find(|&i| layout.batch_member(i) == name)
        .map(Role::Batch)
}

/// One batch as read: its labels, checked against the class count once that is known, and
/// its CHW rows, left in the member's buffer until they are converted into the result.
struct Batch {
    member: String,
    labels: Vec<i64>,
    rows: Rows,
}

/// `count` CHW rows of [`ROW`] bytes in `buf`, the first at `start`, one every `stride`.
struct Rows {
    buf: Vec<u8>,
    start: usize,
    stride: usize,
    count: usize,
}

impl Rows {
    fn row(&self, i: usize) -> &[u8] {
        let at = self.start + i * self.stride;
        &self.buf[at..at + ROW]
    }
}

#[derive(Default)]
struct Found {
    layout: Option<Layout>,
    batches: [Option<Batch>; 6],
    meta: Option<(String, Vec<String>)>,
    files_seen: u64,
}

pub(super) fn read(path: &Path, class_names: Option<Vec<String>>) -> Result<Archive, ArchiveError> {
    let file = File::open(path).map_err(|e| open_error(path, e))?;
    let mut hasher = Sha256::new();
    let failed = Cell::new(false);
    let mut found = Found::default();
    {
        let hashing = Hashing {
            inner: file,
            hasher: &mut hasher,
            failed: &failed,
        };
        let stream_error = |source: io::Error, at: String| {
            if failed.get() {
                ArchiveError::Io {
                    path: path.to_path_buf(),
                    member: at.strip_prefix("in member ").map(str::to_string),
                    source,
                }
            } else {
                ArchiveError::Corrupt {
                    path: path.to_path_buf(),
                    at,
                    source,
                }
            }
        };
        let mut tar = tar::Archive::new(GzDecoder::new(hashing));
        let mut last: Option<String> = None;
        let after_last = |last: &Option<String>| match last {
            None => "before the first member".to_string(),
            Some(m) => format!("after member {m}"),
        };
        let entries = tar
            .entries()
            .map_err(|e| stream_error(e, after_last(&last)))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| stream_error(e, after_last(&last)))?;
            let name = {
                let raw = entry.path_bytes();
                let name = String::from_utf8_lossy(&raw);
                name.strip_prefix("./").unwrap_or(&name).to_string()
            };
            if entry.header().entry_type().is_dir() {
                last = Some(name);
                continue;
            }
            found.files_seen += 1;
            if found.layout.is_none() {
                found.layout = [Layout::Python, Layout::Binary]
                    .into_iter()
                    .find(|l| name.starts_with(&format!("{}/", l.dir())));
            }
            if let Some(role) = found.layout.and_then(|l| role(l, &name)) {
                let buf = member_bytes(&mut entry)
                    .map_err(|e| stream_error(e, format!("in member {name}")))?;
                found.keep(path, role, &name, buf)?;
            }
            last = Some(name);
        }
        // Read to the very end: the tar padding, then the gzip trailer (its CRC checks the
        // whole stream), then anything after it, so the fingerprint covers the whole file.
        let at_end = || match &last {
            None => "before the first member".to_string(),
            Some(_) => "after the last member".to_string(),
        };
        let mut gz = tar.into_inner();
        io::copy(&mut gz, &mut io::sink()).map_err(|e| stream_error(e, at_end()))?;
        io::copy(&mut gz.into_inner(), &mut io::sink()).map_err(|e| stream_error(e, at_end()))?;
    }
    let fingerprint = hex::encode(hasher.finalize());
    assemble(path, found, class_names, fingerprint)
}

/// A tar member's bytes, all of them: a stream that ends early is an error.
fn member_bytes<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<u8>> {
    let size = entry.size();
    let mut buf = Vec::with_capacity(size.min(RESERVE_MAX) as usize);
    entry.read_to_end(&mut buf)?;
    if buf.len() as u64 != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the member is {size} bytes but the stream ends after {}",
                buf.len()
            ),
        ));
    }
    Ok(buf)
}

impl Found {
    /// Keeps member `name` of the archive at `path`, a batch or the class names, read from
    /// `buf`.
    fn keep(
        &mut self,
        path: &Path,
        role: Role,
        name: &str,
        buf: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        let layout = self.layout.expect("a role implies a layout");
        let bad = |reason: String| ArchiveError::BadMember {
            path: path.to_path_buf(),
            member: name.to_string(),
            reason,
        };
        match role {
            Role::Batch(i) => {
                let (labels, rows) = match layout {
                    Layout::Python => python_batch(buf),
                    Layout::Binary => binary_batch(buf),
                }
                .map_err(bad)?;
                self.batches[i] = Some(Batch {
                    member: name.to_string(),
                    labels,
                    rows,
                });
            }
            Role::Meta => {
                let names = match layout {
                    Layout::Python => python_meta(&buf),
                    Layout::Binary => binary_meta(&buf),
                }
                .map_err(bad)?;
                self.meta = Some((name.to_string(), names));
            }
        }
        Ok(())
    }
}

/// Checks that every member is there and builds the result in batch order.
fn assemble(
    path: &Path,
    found: Found,
    class_names: Option<Vec<String>>,
    fingerprint: String,
) -> Result<Archive, ArchiveError> {
    let Some(layout) = found.layout else {
        return Err(ArchiveError::UnknownLayout {
            path: path.to_path_buf(),
            files_seen: found.files_seen,
        });
    };
    let missing = |member: String| ArchiveError::MissingMember {
        path: path.to_path_buf(),
        member,
    };
    let mut batches = Vec::with_capacity(BATCHES.len());
    for (i, b) in found.batches.into_iter().enumerate() {
        batches.push(b.ok_or_else(|| missing(layout.batch_member(i)))?);
    }
    let (meta_member, meta_names) = found.meta.ok_or_else(|| missing(layout.meta_member()))?;
    let classes = match class_names {
        Some(given) if given.len() != meta_names.len() => {
            return Err(ArchiveError::ClassCount {
                path: path.to_path_buf(),
                member: meta_member,
                given: given.len(),
                found: meta_names.len(),
            });
        }
        Some(given) => given,
        None => meta_names,
    };
    for b in &batches {
        // Labels are stored as bytes: more than 256 classes cannot be told apart.
        let n = classes.len().min(256) as i64;
        if let Some(&l) = b.labels.iter().find(|&&l| !(0..n).contains(&l)) {
            return Err(ArchiveError::BadMember {
                path: path.to_path_buf(),
                member: b.member.clone(),
                reason: format!("label {l} out of range ({} classes)", classes.len()),
            });
        }
    }
    let test = batches.pop().expect("six batches");
    Ok(Archive {
        path: path.to_path_buf(),
        format: ArchiveFormat::Cifar10,
        fingerprint,
        classes,
        height: 32,
        width: 32,
        channels: 3,
        train: to_hwc(batches),
        test: to_hwc(vec![test]),
        files_seen: found.files_seen,
    })
}

/// Concatenates batches, converting each CHW row to HWC on the way; each member buffer
/// is freed as soon as it is converted.
fn to_hwc(batches: Vec<Batch>) -> Images {
    let count: usize = batches.iter().map(|b| b.rows.count).sum();
    let mut pixels = vec![0u8; count * ROW];
    let mut labels = Vec::with_capacity(count);
    let mut out = pixels.chunks_exact_mut(ROW);
    for b in batches {
        for i in 0..b.rows.count {
            let (src, dst) = (b.rows.row(i), out.next().expect("sized above"));
            let (r, rest) = src.split_at(1024);
            let (g, bl) = rest.split_at(1024);
            for (p, px) in dst.chunks_exact_mut(3).enumerate() {
                px[0] = r[p];
                px[1] = g[p];
                px[2] = bl[p];
            }
        }
        // Labels were checked against the class count (at most 256 of them matter).
        labels.extend(b.labels.iter().map(|&l| l as u8));
    }
    Images { pixels, labels }
}

/// A binary batch: records of one label byte and a CHW row.
fn binary_batch(buf: Vec<u8>) -> Result<(Vec<i64>, Rows), String> {
    let record = ROW + 1;
    if !buf.len().is_multiple_of(record) {
        return Err(format!(
            "{} bytes is not a whole number of {record}-byte records (1 label byte + {ROW} pixel bytes)",
            buf.len()
        ));
    }
    let count = buf.len() / record;
    let labels = buf.iter().step_by(record).map(|&l| l as i64).collect();
    Ok((
        labels,
        Rows {
            buf,
            start: 1,
            stride: record,
            count,
        },
    ))
}

fn binary_meta(buf: &[u8]) -> Result<Vec<String>, String> {
    let text = std::str::from_utf8(buf).map_err(|e| format!("not UTF-8 text: {e}"))?;
    let names: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    if names.is_empty() {
        return Err("lists no class names".into());
    }
    Ok(names)
}

/// A python batch: a pickled dict with `data` (a uint8 array of CHW rows) and `labels`.
fn python_batch(buf: Vec<u8>) -> Result<(Vec<i64>, Rows), String> {
    let (labels, data) =
        parse_python_batch(&buf).map_err(|why| format!("not a CIFAR-10 batch: {why}"))?;
    if labels.len() != data.rows {
        return Err(format!("{} labels for {} images", labels.len(), data.rows));
    }
    let rows = match data.bytes {
        Placed::In(start) => Rows {
            buf,
            start,
            stride: ROW,
            count: data.rows,
        },
        Placed::Owned(own) => Rows {
            buf: own,
            start: 0,
            stride: ROW,
            count: data.rows,
        },
    };
    Ok((labels, rows))
}

/// Where a batch's pixel bytes are: at an offset in the member's buffer (the usual case),
/// or decoded into a buffer of their own (`_codecs.encode` of a string with bytes >= 0x80).
enum Placed {
    In(usize),
    Owned(Vec<u8>),
}

struct Data {
    rows: usize,
    bytes: Placed,
}

fn parse_python_batch(buf: &[u8]) -> Result<(Vec<i64>, Data), String> {
    use pickle::{Bytes, Value};
    let p = pickle::parse(buf).map_err(|e| format!("not a pickle ({e})"))?;
    let data = dict_item(&p, "data")?;
    let labels = dict_item(&p, "labels")?;
    let (rows, cols, bytes) = uint8_matrix(&p, data).map_err(|e| format!("'data' {e}"))?;
    if cols != ROW {
        return Err(format!(
            "'data' has rows of {cols} bytes, not {ROW} (32x32 RGB)"
        ));
    }
    let labels = p
        .list(labels)
        .and_then(|items| {
            items
                .iter()
                .map(Value::as_int)
                .collect::<Option<Vec<i64>>>()
        })
        .ok_or("'labels' is not a list of integers")?;
    let bytes = match bytes {
        // Borrowed bytes lie in `buf`, but for an empty string (`bytes()`), which may not.
        Bytes::Borrowed(b) => (b.as_ptr() as usize)
            .checked_sub(buf.as_ptr() as usize)
            .filter(|&at| at + b.len() <= buf.len())
            .map_or_else(|| Placed::Owned(b.to_vec()), Placed::In),
        Bytes::Owned(v) => {
            Placed::Owned(std::rc::Rc::try_unwrap(v).unwrap_or_else(|v| (*v).clone()))
        }
    };
    Ok((labels, Data { rows, bytes }))
}

fn python_meta(buf: &[u8]) -> Result<Vec<String>, String> {
    let inner = || -> Result<Vec<String>, String> {
        let p = pickle::parse(buf).map_err(|e| format!("not a pickle ({e})"))?;
        let names = dict_item(&p, "label_names")?;
        let names = p
            .list(names)
            .ok_or("'label_names' is not a list")?
            .iter()
            .map(|v| v.as_text().ok_or("'label_names' holds a non-string"))
            .collect::<Result<Vec<String>, _>>()?;
        if names.is_empty() {
            return Err("'label_names' is empty".into());
        }
        Ok(names)
    };
    inner().map_err(|why| format!("not a CIFAR-10 batches.meta: {why}"))
}

/// `root[key]`, the pickle's root being a dict whose keys are byte strings (Python 2 str)
/// or strings.
fn dict_item<'p, 'a>(
    p: &'p pickle::Pickle<'a>,
    key: &str,
) -> Result<&'p pickle::Value<'a>, String> {
    if p.dict(&p.root).is_none() {
        return Err(format!(
            "the pickle holds {}, not a dict",
            p.describe(&p.root)
        ));
    }
    p.get(&p.root, key).ok_or_else(|| format!("no '{key}' key"))
}

/// The rows, columns and bytes of a C-order 2-D uint8 numpy array.
fn uint8_matrix<'a>(
    p: &pickle::Pickle<'a>,
    v: &pickle::Value<'a>,
) -> Result<(usize, usize, pickle::Bytes<'a>), String> {
    let array = p.ndarray(v)?;
    let descr = array.dtype.trim_start_matches(['|', '<', '>', '=']);
    if descr != "u1" {
        return Err(format!(
            "is {}, not uint8",
            pickle::dtype_name(&array.dtype)
        ));
    }
    if array.fortran {
        return Err("is a Fortran-order array".into());
    }
    let &[rows, cols] = array.shape.as_slice() else {
        return Err(format!("has shape {:?}, not (images, {ROW})", array.shape));
    };
    let len = rows.checked_mul(cols);
    if len != Some(array.data.len()) {
        return Err(format!(
            "holds {} bytes for shape ({rows}, {cols})",
            array.data.len()
        ));
    }
    Ok((rows, cols, array.data))
}
