//! Public image-classification downloads read into memory: CIFAR-10 archives, IDX folders.
//!
//! CIFAR-10 archives are streamed once through gzip and tar, never extracted: each member is
//! read into one buffer and checked on the spot (so errors name it), and the pixels go from
//! the archive's CHW rows to HWC straight into the final buffers once every member has been
//! seen. The python version's batches are pickles, read by a small stack machine (`pickle`)
//! that records numpy arrays from their pickled state and runs nothing. [`fixtures`] writes
//! both CIFAR-10 layouts and IDX folders from seeded pixels.

use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The download formats [`open`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveFormat {
    /// `cifar-10-python.tar.gz` or `cifar-10-binary.tar.gz`, as downloaded.
    Cifar10,
    /// A folder holding the four MNIST-style IDX files, each optionally gzipped.
    Idx,
}

impl crate::choice::Choice for ArchiveFormat {
    const ALL: &'static [Self] = &[ArchiveFormat::Cifar10, ArchiveFormat::Idx];
    fn name(self) -> &'static str {
        match self {
            ArchiveFormat::Cifar10 => "cifar10",
            ArchiveFormat::Idx => "idx",
        }
    }
}
crate::choice_names!(ArchiveFormat);

/// Images of one official set (train or test), in source order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Images {
    /// HWC uint8 (height*width*channels bytes per image, RGB for CIFAR, one gray channel for IDX).
    pub pixels: Vec<u8>,
    /// One label per image, an index into [`Archive::classes`].
    pub labels: Vec<u8>,
}

impl Images {
    /// The number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`, `bytes_per_image` bytes (see [`Archive::bytes_per_image`]).
    ///
    /// # Panics
    /// If `i` is not below [`Images::len`].
    pub fn image(&self, i: usize, bytes_per_image: usize) -> &[u8] {
        &self.pixels[i * bytes_per_image..(i + 1) * bytes_per_image]
    }
}

/// A download read into memory.
#[derive(Debug)]
pub struct Archive {
    pub path: PathBuf,
    pub format: ArchiveFormat,
    /// Lowercase hex SHA-256 of the source bytes as read: the .tar.gz file; for IDX, the four
    /// files (train images, train labels, test images, test labels, in that order) hashed one
    /// after the other.
    pub fingerprint: String,
    /// Class names, index = label.
    pub classes: Vec<String>,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    pub train: Images,
    pub test: Images,
    /// Files (archive members, or IDX files) seen. Directory entries of an archive do not count.
    pub files_seen: u64,
}

impl Archive {
    /// Bytes of one HWC image.
    pub fn bytes_per_image(&self) -> usize {
        self.height as usize * self.width as usize * self.channels as usize
    }
}

/// Why a download cannot be read. Each message names the file and, where there is one, the
/// archive member or IDX file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The path given does not exist.
    #[error("{0} does not exist")]
    NotFound(PathBuf),
    /// Reading failed below gzip and tar: the disk, the file system.
    #[error("cannot read {path}{}: {source}", in_member(.member))]
    Io {
        path: PathBuf,
        /// The archive member being read, if any.
        member: Option<String>,
        source: io::Error,
    },
    /// CIFAR-10 reads a file.
    #[error("{0} is a folder; the cifar10 format reads the .tar.gz file as downloaded")]
    IsDir(PathBuf),
    /// IDX reads a folder.
    #[error(
        "{0} is not a folder; the idx format reads the folder holding train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz)"
    )]
    NotDir(PathBuf),
    /// The file reads but its gzip or tar framing is broken: a partial download, most often.
    #[error("{path}: truncated or corrupt gzip/tar stream {at}: {source}")]
    Corrupt {
        path: PathBuf,
        /// Where the stream broke: `in member M`, `after member M`, `before the first member`.
        at: String,
        source: io::Error,
    },
    /// No member lies under either layout's folder.
    #[error(
        "{path} is not a CIFAR-10 archive: none of its {files_seen} files lies under cifar-10-batches-py/ (python version) or cifar-10-batches-bin/ (binary version)"
    )]
    UnknownLayout { path: PathBuf, files_seen: u64 },
    /// A batch or the metadata of the layout found is missing.
    #[error("{path} has no member {member} (is this the CIFAR-10 python or binary archive?)")]
    MissingMember { path: PathBuf, member: String },
    /// A member whose content is wrong.
    #[error("{path}: member {member}: {reason}")]
    BadMember {
        path: PathBuf,
        member: String,
        reason: String,
    },
    /// The class names given are not as many as the archive's metadata (`member`) names.
    #[error("{path}: {given} class names given but {member} names {found} classes")]
    ClassCount {
        path: PathBuf,
        member: String,
        given: usize,
        found: usize,
    },
    /// One of the four IDX files is missing.
    #[error("{dir} has neither {file} nor {file}.gz")]
    MissingIdx { dir: PathBuf, file: String },
    /// An IDX file whose content is wrong; `path` is the file, `file` its name.
    #[error("{path}: {reason}")]
    BadIdx {
        path: PathBuf,
        file: String,
        reason: String,
    },
}

fn in_member(member: &Option<String>) -> String {
    member
        .as_ref()
        .map(|m| format!(" (member {m})"))
        .unwrap_or_default()
}

impl crate::exit::ProcessExitCode for ArchiveError {
    /// [`ExitCode::Failure`](crate::exit::ExitCode::Failure) for I/O errors other than a
    /// missing file (retrying may help); [`ExitCode::UserError`](crate::exit::ExitCode::UserError)
    /// for everything else: the download is missing, incomplete or not what the format says.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            ArchiveError::Io { source, .. } if source.kind() != io::ErrorKind::NotFound => {
                ExitCode::Failure
            }
            _ => ExitCode::UserError,
        }
    }
}

/// Fashion-MNIST's class names, index = label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// CIFAR-10's class names, as its `batches.meta` lists them.
const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// Class names for IDX sets, whose files carry none: `fashion-mnist`, `mnist` ("0".."9").
pub fn named_classes(preset: &str) -> Option<Vec<String>> {
    match preset {
        "fashion-mnist" => Some(
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        "mnist" => Some((0..10).map(|i| i.to_string()).collect()),
        _ => None,
    }
}

/// Reads the download at `path` into memory. `class_names`, if given, replaces the names the
/// download carries (CIFAR-10: it must name as many classes) or supplies them (IDX: every
/// label must be below its length; without it the classes are "0".."K-1").
pub fn open(
    path: &Path,
    format: ArchiveFormat,
    class_names: Option<Vec<String>>,
) -> Result<Archive, ArchiveError> {
    let meta = std::fs::metadata(path).map_err(|e| open_error(path, e))?;
    match format {
        ArchiveFormat::Cifar10 if meta.is_dir() => Err(ArchiveError::IsDir(path.to_path_buf())),
        ArchiveFormat::Cifar10 => cifar::read(path, class_names),
        ArchiveFormat::Idx if !meta.is_dir() => Err(ArchiveError::NotDir(path.to_path_buf())),
        ArchiveFormat::Idx => idx::read(path, class_names),
    }
}

fn open_error(path: &Path, e: io::Error) -> ArchiveError {
    match e.kind() {
        io::ErrorKind::NotFound => ArchiveError::NotFound(path.to_path_buf()),
        _ => ArchiveError::Io {
            path: path.to_path_buf(),
            member: None,
            source: e,
        },
    }
}

/// Hashes what passes through and remembers whether the file itself failed, so that an error
/// surfacing from gzip or tar can be told apart: the disk (retry) or the content (fix it).
struct Hashing<'h, R> {
    inner: R,
    hasher: &'h mut Sha256,
    failed: &'h Cell<bool>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.failed.set(true);
                Err(e)
            }
        }
    }
}

/// A limit on what is reserved up front from sizes a file claims: a corrupt header must not
/// make us allocate gigabytes before the data runs out.
pub(crate) const RESERVE_MAX: u64 = 64 << 20;

mod cifar;
mod idx;

pub mod fixtures;

#[cfg(test)]
mod tests {
    use super::fixtures::{self, Generated};
    use super::*;
    use crate::exit::{ExitCode, ProcessExitCode};
    use crate::pickle;
    use flate2::read::GzDecoder;
    use std::fs::File;
    use std::io::Write;

    const PY: &str = "cifar-10-batches-py";
    const BIN: &str = "cifar-10-batches-bin";

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn assert_matches(a: &Archive, g: &Generated) {
        assert_eq!(a.classes, g.classes);
        assert_eq!(
            (a.height, a.width, a.channels),
            (g.height, g.width, g.channels)
        );
        assert_eq!(
            a.bytes_per_image(),
            (g.height * g.width * g.channels) as usize
        );
        assert!(a.train == g.train, "train images differ");
        assert!(a.test == g.test, "test images differ");
    }

    /// The regular members of a `.tar.gz`, names relative to its top folder, and that folder.
    fn members(path: &Path) -> (String, Vec<(String, Vec<u8>)>) {
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(path).unwrap()));
        let mut dir = String::new();
        let mut out = vec![];
        for e in tar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let (top, rest) = name.split_once('/').unwrap();
            dir = top.to_string();
            if e.header().entry_type().is_file() {
                let mut data = vec![];
                e.read_to_end(&mut data).unwrap();
                out.push((rest.to_string(), data));
            }
        }
        (dir, out)
    }

    /// Copies `src` to `dst`, passing each member through `f` (`None` drops it).
    fn rewrite(src: &Path, dst: &Path, mut f: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) {
        let (dir, list) = members(src);
        let list: Vec<_> = list
            .into_iter()
            .filter_map(|(n, d)| f(&n, d).map(|d| (n, d)))
            .collect();
        fixtures::write_tar_gz(dst, &dir, &list).unwrap();
    }

    fn cifar_error(path: &Path) -> ArchiveError {
        open(path, ArchiveFormat::Cifar10, None).unwrap_err()
    }

    fn python_fixture(dir: &Path) -> (PathBuf, Generated) {
        let path = dir.join("cifar-10-python.tar.gz");
        let g = fixtures::cifar10_python(&path, 7, 9, 1);
        (path, g)
    }

    #[test]
    fn cifar_python_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (path, g) = python_fixture(dir.path());
        let a = open(&path, ArchiveFormat::Cifar10, None).unwrap();
        assert_matches(&a, &g);
        assert_eq!((a.train.len(), a.test.len()), (35, 9));
        assert_eq!(g.classes[0], "airplane");
        assert_eq!(a.format, ArchiveFormat::Cifar10);
        assert_eq!(a.path, path);
        assert_eq!(a.files_seen, 8);
        assert_eq!(a.fingerprint, sha256(&std::fs::read(&path).unwrap()));
        let (top, list) = members(&path);
        assert_eq!(top, PY);
        let names: Vec<&str> = list.iter().map(|(n, _)| n.as_str()).collect();
        assert!(names.contains(&"readme.html") && names.contains(&"batches.meta"));

        // The bytes cPickle writes (memo from 1; no memo for tuples, 1-char strings, the data).
        let batch = &list.iter().find(|(n, _)| n == "data_batch_1").unwrap().1;
        let head: &[u8] = b"\x80\x02}q\x01(U\x0bbatch_labelq\x02U\x15training batch 1 of 5q\x03\
            U\x06labelsq\x04]q\x05(";
        assert!(batch.starts_with(head));
        let array: &[u8] = b"U\x04dataq\x06cnumpy.core.multiarray\n_reconstruct\nq\x07\
            cnumpy\nndarray\nq\x08K\x00\x85U\x01b\x87Rq\t(K\x01K\x07M\x00\x0c\x86\
            cnumpy\ndtype\nq\nU\x02u1K\x00K\x01\x87Rq\x0b\
            (K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T\x00T\x00\x00";
        let at = batch
            .windows(array.len())
            .position(|w| w == array)
            .expect("the array as cPickle writes it")
            + array.len();
        // The CHW rows, pixel p of channel c at c * 1024 + p, came back HWC.
        let chw = &batch[at..at + 7 * 3072];
        for i in [0, 6] {
            for (p, c) in [(0, 0), (1, 2), (500, 1), (1023, 2)] {
                assert_eq!(
                    a.train.image(i, 3072)[p * 3 + c],
                    chw[i * 3072 + c * 1024 + p]
                );
            }
        }
        assert!(batch.ends_with(b"eu."));
    }

    #[test]
    fn cifar_binary_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-binary.tar.gz");
        let g = fixtures::cifar10_binary(&path, 6, 5, 2);
        let a = open(&path, ArchiveFormat::Cifar10, None).unwrap();
        assert_matches(&a, &g);
        assert_eq!((a.train.len(), a.test.len()), (30, 5));
        assert_eq!(a.files_seen, 8);
        assert_eq!(a.fingerprint, sha256(&std::fs::read(&path).unwrap()));
        let (top, list) = members(&path);
        assert_eq!(top, BIN);
        let batch = &list
            .iter()
            .find(|(n, _)| n == "data_batch_1.bin")
            .unwrap()
            .1;
        assert_eq!(batch.len(), 6 * 3073);
        // Record 0: its label, then the red plane.
        assert_eq!(batch[0], g.train.labels[0]);
        assert_eq!(batch[1], g.train.pixels[0]);
        assert_eq!(batch[2], g.train.pixels[3]);
        assert_eq!(batch[1 + 1024], g.train.pixels[1]);
    }

    #[test]
    fn archives_have_gnu_headers() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = python_fixture(dir.path());
        let mut tar = tar::Archive::new(GzDecoder::new(File::open(&path).unwrap()));
        let mut seen = vec![];
        for e in tar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            assert!(h.as_gnu().is_some());
            assert_eq!(h.mtime().unwrap(), 1_244_160_000);
            let dir = h.entry_type().is_dir();
            assert_eq!(h.mode().unwrap(), if dir { 0o755 } else { 0o644 });
            seen.push(String::from_utf8(e.path_bytes().to_vec()).unwrap());
        }
        assert_eq!(seen[0], format!("{PY}/"));
        assert_eq!(seen.len(), 9);
        // Written twice, the same bytes.
        let again = dir.path().join("again.tar.gz");
        fixtures::cifar10_python(&again, 7, 9, 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&again).unwrap()
        );
    }

    #[test]
    fn idx_round_trip_plain_and_gzipped() {
        for gzip in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let g = fixtures::idx(dir.path(), 40, 12, 28, gzip, 3);
            let a = open(dir.path(), ArchiveFormat::Idx, None).unwrap();
            assert_matches(&a, &g);
            assert_eq!((a.height, a.width, a.channels), (28, 28, 1));
            assert_eq!(a.classes.len(), 10);
            assert_eq!(a.files_seen, 4);
            let suffix = if gzip { ".gz" } else { "" };
            let mut all = vec![];
            for f in [
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            ] {
                all.extend(std::fs::read(dir.path().join(format!("{f}{suffix}"))).unwrap());
            }
            assert_eq!(a.fingerprint, sha256(&all));
        }
    }

    #[test]
    fn idx_prefers_gzipped_files() {
        let dir = tempfile::tempdir().unwrap();
        fixtures::idx(dir.path(), 10, 10, 8, false, 1);
        let g = fixtures::idx(dir.path(), 20, 5, 8, true, 2);
        let a = open(dir.path(), ArchiveFormat::Idx, None).unwrap();
        assert_matches(&a, &g);
    }

    #[test]
    fn fixtures_are_deterministic_and_near_balanced() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a.tar.gz"),
            dir.path().join("b.tar.gz"),
            dir.path().join("c.tar.gz"),
        );
        fixtures::cifar10_python(&a, 200, 10, 7);
        fixtures::cifar10_python(&b, 200, 10, 7);
        let g = fixtures::cifar10_python(&c, 200, 10, 8);
        let read = |p: &Path| std::fs::read(p).unwrap();
        assert_eq!(read(&a), read(&b));
        assert_ne!(read(&a), read(&c));
        let mut counts = [0usize; 10];
        for &l in &g.train.labels {
            counts[l as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (70..=130).contains(&n)),
            "{counts:?}"
        );
        assert!(counts.iter().any(|&n| n != 100), "{counts:?}");
    }

    /// Nearest class mean: a crude stand-in for a CNN that must still beat chance (10%) well.
    fn centroid_accuracy(g: &Generated) -> f64 {
        let n = (g.height * g.width * g.channels) as usize;
        let k = g.classes.len();
        let mut sums = vec![vec![0f64; n]; k];
        let mut counts = vec![0f64; k];
        for i in 0..g.train.len() {
            let l = g.train.labels[i] as usize;
            counts[l] += 1.0;
            for (s, &p) in sums[l].iter_mut().zip(g.train.image(i, n)) {
                *s += p as f64;
            }
        }
        let mut right = 0;
        for i in 0..g.test.len() {
            let img = g.test.image(i, n);
            let best = (0..k)
                .min_by(|&a, &b| {
                    let d = |c: usize| -> f64 {
                        img.iter()
                            .zip(&sums[c])
                            .map(|(&p, &s)| (p as f64 - s / counts[c].max(1.0)).powi(2))
                            .sum()
                    };
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            right += (best == g.test.labels[i] as usize) as usize;
        }
        right as f64 / g.test.len() as f64
    }

    #[test]
    fn fixtures_are_learnable() {
        let dir = tempfile::tempdir().unwrap();
        let g = fixtures::cifar10_binary(&dir.path().join("c.tar.gz"), 60, 200, 4);
        let rgb = centroid_accuracy(&g);
        let g = fixtures::idx(&dir.path().join("idx"), 300, 200, 28, true, 4);
        let gray = centroid_accuracy(&g);
        assert!(rgb > 0.3 && gray > 0.3, "rgb {rgb}, gray {gray}");
    }

    fn py_fixture(name: &str) -> Vec<u8> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cifar10-pickles");
        std::fs::read(dir.join(name)).unwrap()
    }

    /// Pickles Python 3 + numpy 2 wrote (tests/fixtures/cifar10-pickles/make.py): bytes as
    /// `_codecs.encode` in protocol 2, as SHORT_BINBYTES/BINBYTES in protocol 4, FRAME,
    /// MEMOIZE, STACK_GLOBAL, `numpy._core`, memo numbered from 0.
    #[test]
    fn reads_pickles_python3_wrote() {
        let dir = tempfile::tempdir().unwrap();
        for protocol in [2, 4] {
            let batch = py_fixture(&format!("batch-protocol{protocol}.pickle"));
            let meta = py_fixture(&format!("meta-protocol{protocol}.pickle"));
            let mut list: Vec<(String, Vec<u8>)> = (1..=5)
                .map(|i| (format!("data_batch_{i}"), batch.clone()))
                .collect();
            list.push(("test_batch".into(), batch));
            list.push(("batches.meta".into(), meta));
            let path = dir.path().join(format!("p{protocol}.tar.gz"));
            fixtures::write_tar_gz(&path, PY, &list).unwrap();
            let a = open(&path, ArchiveFormat::Cifar10, None).unwrap();
            assert_eq!(a.classes.len(), 10);
            assert_eq!(a.classes[9], "truck");
            assert_eq!(a.train.labels, [3, 7].repeat(5));
            assert_eq!(a.test.labels, [3, 7]);
            // data[i][c * 1024 + p] = (i * 3072 + c * 1024 + p) % 251, now HWC.
            for i in 0..2 {
                let img = a.test.image(i, 3072);
                for p in [0, 1, 500, 1023] {
                    for c in 0..3 {
                        let want = ((i * 3072 + c * 1024 + p) % 251) as u8;
                        assert_eq!(img[p * 3 + c], want, "protocol {protocol} image {i}");
                    }
                }
            }
            assert_eq!(a.train.image(9, 3072), a.test.image(1, 3072));
        }
    }

    #[test]
    fn pickle_machine_follows_python() {
        // pickle.dumps({b'a': l, b'b': l, b'e': b'', b'big': 2**40, b'neg': -5, b'f': 1.5,
        //   b't': (1,), b'n': None, b'x': True}) with l = [1, 2], protocols 2 and 4.
        let p2: &[u8] = b"\x80\x02}q\x00(c_codecs\nencode\nq\x01X\x01\x00\x00\x00aq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05]q\x06(K\x01K\x02eh\x01X\x01\x00\x00\x00bq\x07h\x03\x86q\x08Rq\th\x06h\x01X\x01\x00\x00\x00eq\nh\x03\x86q\x0bRq\x0cc__builtin__\nbytes\nq\r)Rq\x0eh\x01X\x03\x00\x00\x00bigq\x0fh\x03\x86q\x10Rq\x11\x8a\x06\x00\x00\x00\x00\x00\x01h\x01X\x03\x00\x00\x00negq\x12h\x03\x86q\x13Rq\x14J\xfb\xff\xff\xffh\x01X\x01\x00\x00\x00fq\x15h\x03\x86q\x16Rq\x17G?\xf8\x00\x00\x00\x00\x00\x00h\x01X\x01\x00\x00\x00tq\x18h\x03\x86q\x19Rq\x1aK\x01\x85q\x1bh\x01X\x01\x00\x00\x00nq\x1ch\x03\x86q\x1dRq\x1eNh\x01X\x01\x00\x00\x00xq\x1fh\x03\x86q Rq!\x88u.";
        let p4: &[u8] = b"\x80\x04\x95V\x00\x00\x00\x00\x00\x00\x00}\x94(C\x01a\x94]\x94(K\x01K\x02eC\x01b\x94h\x02C\x01e\x94C\x00\x94C\x03big\x94\x8a\x06\x00\x00\x00\x00\x00\x01C\x03neg\x94J\xfb\xff\xff\xffC\x01f\x94G?\xf8\x00\x00\x00\x00\x00\x00C\x01t\x94K\x01\x85\x94C\x01n\x94NC\x01x\x94\x88u.";
        for p in [p2, p4] {
            let p = pickle::parse(p).unwrap();
            let get = |k: &str| p.get(&p.root, k).unwrap().clone();
            let ints = |v: pickle::Value| -> Vec<i64> {
                let items = p.list(&v).unwrap();
                items.iter().map(|v| v.as_int().unwrap()).collect()
            };
            assert_eq!(p.dict(&p.root).unwrap().len(), 9);
            assert_eq!(ints(get("a")), [1, 2]);
            // The same list, fetched from the memo after it was filled.
            assert_eq!(ints(get("b")), [1, 2]);
            assert!(matches!(get("e"), pickle::Value::Bytes(b) if b.is_empty()));
            assert_eq!(get("big").as_int(), Some(1 << 40));
            assert_eq!(get("neg").as_int(), Some(-5));
            assert!(matches!(get("f"), pickle::Value::Float(f) if f == 1.5));
            assert_eq!(p.tuple(&get("t")).unwrap()[0].as_int(), Some(1));
            assert!(matches!(get("n"), pickle::Value::None));
            assert!(matches!(get("x"), pickle::Value::Bool(true)));
        }
        // Protocol 0's spelling: {'a': [1]} needs UNICODE, which CIFAR-10 never uses; text
        // integers, PUT and bools do parse: {(1,): False}.
        let p0 = b"(dp0\nVa\np1\n(lp2\nI1\nas.";
        let err = pickle::parse(p0).unwrap_err();
        assert!(err.to_string().contains("unsupported opcode 0x56"), "{err}");
        let p = pickle::parse(b"(dp0\n(I1\ntp1\nI00\ns.").unwrap();
        let items = p.dict(&p.root).unwrap();
        assert_eq!(p.tuple(&items[0].0).unwrap()[0].as_int(), Some(1));
        assert!(matches!(items[0].1, pickle::Value::Bool(false)));
        // Nested a million deep (each level a new list holding the last, via the memo): read,
        // and dropped, without recursion.
        let mut deep = b"\x80\x02]q\x00".to_vec();
        for _ in 0..1_000_000 {
            deep.extend(b"]h\x00aq\x00");
        }
        deep.extend(b"h\x00.");
        assert!(pickle::parse(&deep).is_ok());
        // Refusals.
        let e = pickle::parse(b"\x80\x02cos\nsystem\n.").unwrap_err();
        assert!(
            e.to_string().contains("unsupported global os.system"),
            "{e}"
        );
        let e = pickle::parse(b"\x80\x02K\x01").unwrap_err();
        assert!(e.to_string().contains("without a STOP"), "{e}");
        let e = pickle::parse(b"\x80\x02T\x10\x00\x00\x00abc").unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = pickle::parse(b"\x80\x02(a.").unwrap_err();
        assert!(e.to_string().contains("stack underflow"), "{e}");
        let e = pickle::parse(b"\x80\x02h\x05.").unwrap_err();
        assert!(e.to_string().contains("memo entry 5"), "{e}");
    }

    #[test]
    fn class_names_override() {
        let dir = tempfile::tempdir().unwrap();
        let (path, g) = python_fixture(dir.path());
        let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
        let a = open(&path, ArchiveFormat::Cifar10, Some(names.clone())).unwrap();
        assert_eq!(a.classes, names);
        assert_eq!(a.train, g.train);
        let e = open(&path, ArchiveFormat::Cifar10, Some(names[..5].to_vec())).unwrap_err();
        assert!(matches!(
            e,
            ArchiveError::ClassCount {
                given: 5,
                found: 10,
                ..
            }
        ));
        assert!(
            e.to_string()
                .contains("cifar-10-batches-py/batches.meta names 10 classes"),
            "{e}"
        );

        let idx = dir.path().join("idx");
        let g = fixtures::idx(&idx, 30, 10, 8, true, 5);
        let fashion = named_classes("fashion-mnist").unwrap();
        let a = open(&idx, ArchiveFormat::Idx, Some(fashion.clone())).unwrap();
        assert_eq!(a.classes, fashion);
        assert_eq!(a.train, g.train);
        let few: Vec<String> = vec!["a".into(), "b".into()];
        let e = open(&idx, ArchiveFormat::Idx, Some(few)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("train-labels-idx1-ubyte.gz: label "), "{msg}");
        assert!(msg.contains("out of range (2 classes)"), "{msg}");
    }

    #[test]
    fn named_class_presets() {
        assert_eq!(named_classes("fashion-mnist").unwrap()[9], "Ankle boot");
        assert_eq!(
            named_classes("mnist").unwrap(),
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
        );
        assert!(named_classes("cifar-100").is_none());
    }

    #[test]
    fn truncated_archive_names_the_member() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-python.tar.gz");
        fixtures::cifar10_python(&path, 40, 40, 1);
        let full = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.tar.gz");
        let mut in_member = 0;
        for at in [
            5,
            full.len() / 5,
            full.len() / 2,
            full.len() * 4 / 5,
            full.len() - 4,
        ] {
            std::fs::write(&cut, &full[..at]).unwrap();
            let e = cifar_error(&cut);
            let msg = e.to_string();
            assert_eq!(e.process_exit_code(), ExitCode::UserError, "{msg}");
            let ArchiveError::Corrupt { at: where_, .. } = &e else {
                panic!("cut at {at}: {msg}")
            };
            assert!(msg.starts_with(&format!(
                "{}: truncated or corrupt gzip/tar stream ",
                cut.display()
            )));
            if at == 5 {
                assert_eq!(where_, "before the first member", "{msg}");
            } else if let Some(m) = where_.strip_prefix("in member ") {
                assert!(m.starts_with("cifar-10-batches-py/"), "{msg}");
                in_member += 1;
            } else {
                assert!(where_.starts_with("after "), "{msg}");
            }
        }
        assert!(in_member >= 2, "cuts inside batches name the batch");
    }

    #[test]
    fn missing_members() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = python_fixture(dir.path());
        let dst = dir.path().join("x.tar.gz");
        for (drop, want) in [
            ("data_batch_5", "data_batch_5"),
            ("batches.meta", "batches.meta"),
        ] {
            rewrite(&path, &dst, |n, d| (n != drop).then_some(d));
            let e = cifar_error(&dst);
            assert_eq!(
                e.to_string(),
                format!(
                    "{} has no member {PY}/{want} (is this the CIFAR-10 python or binary archive?)",
                    dst.display()
                )
            );
        }
        let bin = dir.path().join("b.tar.gz");
        fixtures::cifar10_binary(&bin, 3, 3, 1);
        rewrite(&bin, &dst, |n, d| (n != "test_batch.bin").then_some(d));
        assert!(
            cifar_error(&dst)
                .to_string()
                .contains(&format!("no member {BIN}/test_batch.bin"))
        );
    }

    #[test]
    fn neither_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.tar.gz");
        fixtures::write_tar_gz(
            &path,
            "cifar-100-python",
            &[("train".into(), b"x".to_vec())],
        )
        .unwrap();
        let e = cifar_error(&path);
        assert!(
            matches!(e, ArchiveError::UnknownLayout { files_seen: 1, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("cifar-10-batches-py/"));
        // Not gzip at all.
        std::fs::write(&path, b"hello, this is no archive").unwrap();
        let e = cifar_error(&path);
        assert!(
            e.to_string()
                .contains("truncated or corrupt gzip/tar stream before the first member"),
            "{e}"
        );
    }

    fn replace_member(path: &Path, dst: &Path, member: &str, data: Vec<u8>) -> String {
        let mut data = Some(data);
        rewrite(path, dst, |n, d| {
            Some(if n == member { data.take().unwrap() } else { d })
        });
        cifar_error(dst).to_string()
    }

    #[test]
    fn bad_python_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = python_fixture(dir.path());
        let dst = dir.path().join("x.tar.gz");
        let names = |n: usize| (0..n).map(|i| format!("f{i}.png")).collect::<Vec<_>>();
        let rows = vec![0u8; 7 * 3072];
        let prefix = |m: &str| format!("{}: member {PY}/{m}: ", dst.display());

        let p = fixtures::batch_pickle("b", &[1; 6], &rows, 7, 3072, "u1", &names(7));
        let msg = replace_member(&path, &dst, "data_batch_2", p);
        assert_eq!(msg, prefix("data_batch_2") + "6 labels for 7 images");

        let mut labels = vec![1; 7];
        labels[3] = 12;
        let p = fixtures::batch_pickle("b", &labels, &rows, 7, 3072, "u1", &names(7));
        let msg = replace_member(&path, &dst, "test_batch", p);
        assert_eq!(
            msg,
            prefix("test_batch") + "label 12 out of range (10 classes)"
        );

        let msg = replace_member(&path, &dst, "data_batch_1", b"hello, world".to_vec());
        assert!(
            msg.starts_with(&(prefix("data_batch_1") + "not a CIFAR-10 batch: not a pickle")),
            "{msg}"
        );

        let p = fixtures::batch_pickle(
            "b",
            &[1; 7],
            &vec![0; 7 * 3072 * 8],
            7,
            3072,
            "f8",
            &names(7),
        );
        let msg = replace_member(&path, &dst, "data_batch_3", p);
        assert_eq!(
            msg,
            prefix("data_batch_3") + "not a CIFAR-10 batch: 'data' is float64, not uint8"
        );

        let p = fixtures::batch_pickle("b", &[1; 7], &rows, 7 * 3, 1024, "u1", &names(7));
        let msg = replace_member(&path, &dst, "data_batch_4", p);
        assert!(
            msg.contains("data_batch_4: not a CIFAR-10 batch: 'data' has rows of 1024 bytes"),
            "{msg}"
        );

        // A dict without 'data' (Python 3, protocol 2).
        let p = b"\x80\x02}q\x00(c_codecs\nencode\nq\x01X\x06\x00\x00\x00labelsq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05]q\x06K\x01au.";
        let msg = replace_member(&path, &dst, "data_batch_5", p.to_vec());
        assert_eq!(
            msg,
            prefix("data_batch_5") + "not a CIFAR-10 batch: no 'data' key"
        );

        // A list where the dict should be.
        let msg = replace_member(&path, &dst, "data_batch_5", b"\x80\x02]q\x01.".to_vec());
        assert_eq!(
            msg,
            prefix("data_batch_5") + "not a CIFAR-10 batch: the pickle holds a list, not a dict"
        );

        // A truncated pickle.
        let p = fixtures::batch_pickle("b", &[1; 7], &rows, 7, 3072, "u1", &names(7));
        let msg = replace_member(&path, &dst, "data_batch_1", p[..p.len() / 2].to_vec());
        assert!(
            msg.contains("data_batch_1: not a CIFAR-10 batch: not a pickle (truncated"),
            "{msg}"
        );

        let msg = replace_member(&path, &dst, "batches.meta", b"\x80\x02}q\x01.".to_vec());
        assert_eq!(
            msg,
            prefix("batches.meta") + "not a CIFAR-10 batches.meta: no 'label_names' key"
        );
    }

    #[test]
    fn bad_binary_batches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cifar-10-binary.tar.gz");
        fixtures::cifar10_binary(&path, 4, 4, 1);
        let dst = dir.path().join("x.tar.gz");
        let (_, list) = members(&path);
        let batch = |n: &str| list.iter().find(|(m, _)| m == n).unwrap().1.clone();

        let mut b = batch("data_batch_3.bin");
        b.push(0);
        let msg = replace_member(&path, &dst, "data_batch_3.bin", b);
        assert_eq!(
            msg,
            format!(
                "{}: member {BIN}/data_batch_3.bin: 12293 bytes is not a whole number of 3073-byte records (1 label byte + 3072 pixel bytes)",
                dst.display()
            )
        );
        let mut b = batch("test_batch.bin");
        b[3073] = 10;
        let msg = replace_member(&path, &dst, "test_batch.bin", b);
        assert!(
            msg.ends_with(&format!(
                "member {BIN}/test_batch.bin: label 10 out of range (10 classes)"
            )),
            "{msg}"
        );
    }

    fn write_idx(dir: &Path, name: &str, data: &[u8]) {
        let mut gz = flate2::write::GzEncoder::new(
            File::create(dir.join(format!("{name}.gz"))).unwrap(),
            flate2::Compression::fast(),
        );
        gz.write_all(data).unwrap();
        gz.finish().unwrap();
    }

    fn idx_error(dir: &Path) -> String {
        open(dir, ArchiveFormat::Idx, None).unwrap_err().to_string()
    }

    /// A fresh IDX folder in `d` with member `name` replaced by gzipped `bytes`: the error
    /// opening it.
    fn idx_error_with(d: &Path, name: &str, bytes: &[u8]) -> String {
        fixtures::idx(d, 20, 10, 28, true, 1);
        write_idx(d, name, bytes);
        idx_error(d)
    }

    /// An IDX header for `dims` followed by `n` bytes of `fill`.
    fn idx_bytes(dims: &[u32], fill: u8, n: usize) -> Vec<u8> {
        let mut f = fixtures::idx_header(dims);
        f.extend(vec![fill; n]);
        f
    }

    /// How errors name the file `n` of `d`.
    fn in_file(d: &Path, n: &str) -> String {
        format!("{}: ", d.join(n).display())
    }

    #[test]
    fn idx_files_whose_counts_disagree() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();

        // Truncated: the header claims more images than there are.
        assert_eq!(
            idx_error_with(
                d,
                "train-images-idx3-ubyte",
                &idx_bytes(&[60000, 28, 28], 0, 5120)
            ),
            in_file(d, "train-images-idx3-ubyte.gz")
                + "header says 60000 images of 28x28 but the file holds 5120 bytes of pixels (truncated)"
        );

        // Trailing bytes.
        assert_eq!(
            idx_error_with(d, "t10k-labels-idx1-ubyte", &idx_bytes(&[10], 1, 11)),
            in_file(d, "t10k-labels-idx1-ubyte.gz")
                + "header says 10 labels but the file holds 11 bytes of labels (trailing bytes)"
        );

        // Counts disagree.
        assert_eq!(
            idx_error_with(d, "train-labels-idx1-ubyte", &idx_bytes(&[19], 1, 19)),
            in_file(d, "train-labels-idx1-ubyte.gz")
                + "19 labels for 20 images in train-images-idx3-ubyte.gz"
        );

        // Test images of another size.
        assert_eq!(
            idx_error_with(
                d,
                "t10k-images-idx3-ubyte",
                &idx_bytes(&[10, 32, 32], 1, 10 * 32 * 32)
            ),
            in_file(d, "t10k-images-idx3-ubyte.gz")
                + "images are 32x32 but the training images (train-images-idx3-ubyte.gz) are 28x28"
        );
    }

    #[test]
    fn idx_files_with_bad_headers_or_streams() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = |n: &str| in_file(d, n);

        // Bad magic, data type, dimension count; a short file; a corrupt gzip stream.
        for (bytes, want) in [
            (
                &b"\x08\x03\x00\x00\x00\x00\x00\x01"[..],
                "not an IDX file: magic 08 03 00 00, expected 00 00 08 03",
            ),
            (
                b"\x00\x00\x0d\x03",
                "IDX data type 0x0d (float) is not supported, only 0x08 (unsigned byte)",
            ),
            (
                b"\x00\x00\x08\x01\x00\x00\x00\x01\x00",
                "has 1 dimensions, expected 3 (images, rows, columns)",
            ),
            (b"\x00\x00", "too short for an IDX header"),
            (b"\x00\x00\x08\x03\x00\x00", "truncated in the IDX header"),
        ] {
            assert_eq!(
                idx_error_with(d, "train-images-idx3-ubyte", bytes),
                file("train-images-idx3-ubyte.gz") + want
            );
        }
        fixtures::idx(d, 20, 10, 28, true, 1);
        let path = d.join("train-images-idx3-ubyte.gz");
        let gz = std::fs::read(&path).unwrap();
        std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
        let msg = idx_error(d);
        assert!(
            msg.starts_with(
                &(file("train-images-idx3-ubyte.gz") + "truncated or corrupt gzip stream")
            ),
            "{msg}"
        );

        // A gzip file without .gz.
        fixtures::idx(d, 20, 10, 28, true, 1);
        std::fs::rename(&path, d.join("train-images-idx3-ubyte")).unwrap();
        let msg = idx_error(d);
        assert!(
            msg.contains("(it is gzip-compressed: name it .gz)"),
            "{msg}"
        );

        // Missing.
        std::fs::remove_file(d.join("train-images-idx3-ubyte")).unwrap();
        assert_eq!(
            idx_error(d),
            format!(
                "{} has neither train-images-idx3-ubyte nor train-images-idx3-ubyte.gz",
                d.display()
            )
        );
    }

    #[test]
    fn paths_and_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.tar.gz");
        let e = cifar_error(&missing);
        assert!(matches!(e, ArchiveError::NotFound(_)));
        assert_eq!(
            e.to_string(),
            format!("{} does not exist", missing.display())
        );
        assert_eq!(e.process_exit_code(), ExitCode::UserError);
        assert!(matches!(cifar_error(dir.path()), ArchiveError::IsDir(_)));
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = open(&file, ArchiveFormat::Idx, None).unwrap_err();
        assert!(matches!(e, ArchiveError::NotDir(_)));
        assert_eq!(e.process_exit_code(), ExitCode::UserError);

        let io = |kind| ArchiveError::Io {
            path: file.clone(),
            member: Some(format!("{PY}/data_batch_1")),
            source: io::Error::from(kind),
        };
        let e = io(io::ErrorKind::PermissionDenied);
        assert_eq!(e.process_exit_code(), ExitCode::Failure);
        assert!(
            e.to_string()
                .contains(&format!("(member {PY}/data_batch_1)")),
            "{e}"
        );
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(
            io(io::ErrorKind::NotFound).process_exit_code(),
            ExitCode::UserError
        );
    }

    #[test]
    fn format_names() {
        assert_eq!(
            serde_json::to_string(&ArchiveFormat::Cifar10).unwrap(),
            "\"cifar10\""
        );
        assert_eq!(
            serde_json::from_str::<ArchiveFormat>("\"idx\"").unwrap(),
            ArchiveFormat::Idx
        );
        use crate::choice::Choice;
        let names: Vec<String> = ArchiveFormat::ALL.iter().map(|v| v.to_string()).collect();
        assert_eq!(names, ["cifar10", "idx"]);
        for v in ArchiveFormat::ALL {
            assert_eq!(serde_json::to_string(v).unwrap(), format!("\"{v}\""));
            assert_eq!(v.to_string().parse::<ArchiveFormat>().unwrap(), *v);
        }
    }

    /// The real Fashion-MNIST files, where Debian's dataset-fashion-mnist installed them.
    #[test]
    fn real_fashion_mnist() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.is_dir() {
            eprintln!("skipped: {} is absent", dir.display());
            return;
        }
        let a = open(dir, ArchiveFormat::Idx, named_classes("fashion-mnist")).unwrap();
        assert_eq!((a.train.len(), a.test.len()), (60000, 10000));
        assert_eq!((a.height, a.width, a.channels), (28, 28, 1));
        assert_eq!(a.train.pixels.len(), 60000 * 784);
        assert_eq!(a.classes[0], "T-shirt/top");
        for (set, per_class) in [(&a.train, 6000), (&a.test, 1000)] {
            let mut hist = [0usize; 10];
            for &l in &set.labels {
                hist[l as usize] += 1;
            }
            assert_eq!(hist.iter().sum::<usize>(), set.len());
            assert_eq!(hist, [per_class; 10]);
        }
        let plain = open(dir, ArchiveFormat::Idx, None).unwrap();
        assert_eq!(plain.classes, named_classes("mnist").unwrap());
        assert_eq!(plain.fingerprint, a.fingerprint);
    }
}
