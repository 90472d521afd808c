//! Writers of the official layouts, from seeded pixels, for tests and demos: the CIFAR-10
//! python and binary `.tar.gz` archives and an IDX folder. Each class has its own look (a
//! base colour or gray level and stripes of a class-specific direction and period whose
//! phase varies) under an inverted square placed at random and noise, so a small CNN learns
//! it; labels are near-balanced, not exactly. The output depends only on the arguments.
//!
//! The writers panic on I/O errors: they serve tests.

use super::{CIFAR10_CLASSES, Images};
use crate::rng::{below, shuffle};
use flate2::Compression;
use flate2::write::GzEncoder;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// What a writer wrote, as [`super::open`] returns it: HWC pixels, in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub classes: Vec<String>,
    pub train: Images,
    pub test: Images,
    pub height: u32,
    pub width: u32,
    pub channels: u32,
}

/// A fixed modification time for archive members (2009-06-05, CIFAR-10's release).
const MTIME: u64 = 1_244_160_000;

/// Writes `dest` as `cifar-10-python.tar.gz`: `cifar-10-batches-py/` with `data_batch_1`
/// .. `data_batch_5` (`per_batch` images each), `test_batch` (`test` images),
/// `batches.meta` and `readme.html`. Batches are pickled byte for byte as Python 2's
/// `cPickle.dump(d, f, protocol=2)` writes the official ones.
pub fn cifar10_python(dest: &Path, per_batch: usize, test: usize, seed: u64) -> Generated {
    let g = cifar_content(per_batch, test, seed);
    let batch = |i: usize| {
        let (set, range, label) = batch_slice(&g, per_batch, i);
        let labels: Vec<i64> = set.labels[range.clone()]
            .iter()
            .map(|&l| l as i64)
            .collect();
        let names: Vec<String> = range
            .clone()
            .map(|j| {
                let global = if i < 5 { j } else { 5 * per_batch + j };
                format!("{}_s_{:06}.png", g.classes[set.labels[j] as usize], global)
            })
            .collect();
        let chw = to_chw(&set.pixels[range.start * 3072..range.end * 3072]);
        batch_pickle(&label, &labels, &chw, range.len(), 3072, "u1", &names)
    };
    let meta = meta_pickle(per_batch, &g.classes);
    let members = unsorted([
        ("data_batch_4", batch(3)),
        ("readme.html", README.as_bytes().to_vec()),
        ("test_batch", batch(5)),
        ("data_batch_3", batch(2)),
        ("batches.meta", meta),
        ("data_batch_2", batch(1)),
        ("data_batch_5", batch(4)),
        ("data_batch_1", batch(0)),
    ]);
    write_tar_gz(dest, "cifar-10-batches-py", &members).expect("write the CIFAR-10 fixture");
    g
}

/// Writes `dest` as `cifar-10-binary.tar.gz`: `cifar-10-batches-bin/` with
/// `data_batch_1.bin` .. `data_batch_5.bin`, `test_batch.bin` (records of a label byte and
/// 3072 CHW pixel bytes), `batches.meta.txt` and `readme.html`.
pub fn cifar10_binary(dest: &Path, per_batch: usize, test: usize, seed: u64) -> Generated {
    let g = cifar_content(per_batch, test, seed);
    let batch = |i: usize| {
        let (set, range, _) = batch_slice(&g, per_batch, i);
        let mut out = Vec::with_capacity(range.len() * 3073);
        for j in range {
            out.push(set.labels[j]);
            out.extend(to_chw(set.image(j, 3072)));
        }
        out
    };
    // As in the official file: one name a line, then blank lines.
    let meta = format!("{}\n\n", g.classes.join("\n")).into_bytes();
    let members = unsorted([
        ("data_batch_1.bin", batch(0)),
        ("batches.meta.txt", meta),
        ("data_batch_3.bin", batch(2)),
        ("data_batch_4.bin", batch(3)),
        ("test_batch.bin", batch(5)),
        ("readme.html", README.as_bytes().to_vec()),
        ("data_batch_2.bin", batch(1)),
        ("data_batch_5.bin", batch(4)),
    ]);
    write_tar_gz(dest, "cifar-10-batches-bin", &members).expect("write the CIFAR-10 fixture");
    g
}

/// Writes the four IDX files into `dir` (made if missing): `train` and `test` gray images
/// of `side`x`side` and their labels, 10 classes, each file gzipped (`.gz`) if `gzip`.
/// The classes are "0".."K-1", K the largest label drawn plus one, as [`super::open`]
/// names them without class names.
pub fn idx(dir: &Path, train: usize, test: usize, side: u32, gzip: bool, seed: u64) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train_set = draw(&mut rng, train, 10, side, false);
    let test_set = draw(&mut rng, test, 10, side, false);
    let k = train_set
        .labels
        .iter()
        .chain(&test_set.labels)
        .max()
        .map_or(0, |&m| m as usize + 1);
    std::fs::create_dir_all(dir).expect("create the IDX fixture folder");
    let images = |set: &Images| {
        let mut out = idx_header(&[set.len() as u32, side, side]);
        out.extend_from_slice(&set.pixels);
        out
    };
    let labels = |set: &Images| {
        let mut out = idx_header(&[set.len() as u32]);
        out.extend_from_slice(&set.labels);
        out
    };
    for (name, data) in [
        ("train-images-idx3-ubyte", images(&train_set)),
        ("train-labels-idx1-ubyte", labels(&train_set)),
        ("t10k-images-idx3-ubyte", images(&test_set)),
        ("t10k-labels-idx1-ubyte", labels(&test_set)),
    ] {
        let path = if gzip {
            dir.join(format!("{name}.gz"))
        } else {
            dir.join(name)
        };
        write_file(&path, &data, gzip).expect("write the IDX fixture");
    }
    Generated {
        classes: (0..k).map(|i| i.to_string()).collect(),
        train: train_set,
        test: test_set,
        height: side,
        width: side,
        channels: 1,
    }
}

/// The IDX header of a ubyte file with these dimensions.
pub(super) fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

fn write_file(path: &Path, data: &[u8], gzip: bool) -> io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    if gzip {
        let mut gz = GzEncoder::new(out, Compression::default());
        gz.write_all(data)?;
        out = gz.finish()?;
    } else {
        out.write_all(data)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()
}

const README: &str = "<html><head><title>CIFAR-10 (synthetic fixture)</title></head>\n\
    <body><p>Synthetic images in the layout of the CIFAR-10 dataset \
    (https://www.cs.toronto.edu/~kriz/cifar.html), written for tests.</p></body></html>\n";

fn cifar_content(per_batch: usize, test: usize, seed: u64) -> Generated {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let train = draw(&mut rng, 5 * per_batch, 10, 32, true);
    let test = draw(&mut rng, test, 10, 32, true);
    Generated {
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
        train,
        test,
        height: 32,
        width: 32,
        channels: 3,
    }
}

/// Batch `i` (0-4 train, 5 test): its set, the images in it and its `batch_label`.
fn batch_slice(
    g: &Generated,
    per_batch: usize,
    i: usize,
) -> (&Images, std::ops::Range<usize>, String) {
    if i < 5 {
        let label = format!("training batch {} of 5", i + 1);
        (&g.train, i * per_batch..(i + 1) * per_batch, label)
    } else {
        (&g.test, 0..g.test.len(), "testing batch 1 of 1".to_string())
    }
}

/// HWC images of 32x32x3 to CIFAR's CHW rows.
fn to_chw(hwc: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; hwc.len()];
    for (src, dst) in hwc.chunks_exact(3072).zip(out.chunks_exact_mut(3072)) {
        for (p, px) in src.chunks_exact(3).enumerate() {
            for c in 0..3 {
                dst[c * 1024 + p] = px[c];
            }
        }
    }
    out
}

/// Members in the order given: the official archives list theirs unsorted (directory
/// order), so a reader must not rely on any.
fn unsorted<const N: usize>(members: [(&str, Vec<u8>); N]) -> Vec<(String, Vec<u8>)> {
    members
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect()
}

/// Writes a `.tar.gz` of `dir/` and its `members` as GNU tar does: GNU headers, mode 0644
/// (0755 for the folder), owner 0, a fixed mtime.
pub(super) fn write_tar_gz(
    dest: &Path,
    dir: &str,
    members: &[(String, Vec<u8>)],
) -> io::Result<()> {
    let gz = GzEncoder::new(BufWriter::new(File::create(dest)?), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(MTIME);
    // set_path drops the trailing slash GNU tar writes for folders.
    let name = format!("{dir}/");
    header.as_gnu_mut().expect("a GNU header").name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    tar.append(&header, io::empty())?;
    for (name, data) in members {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_mtime(MTIME);
        tar.append_data(&mut header, format!("{dir}/{name}"), &data[..])?;
    }
    let file = tar.into_inner()?.finish()?;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// A pickle as Python 2's cPickle writes it with protocol 2. Unlike pickle.py it numbers
/// memo entries from 1, and memoizes only objects referenced more than once while
/// pickled: strings of 2+ characters that a dict or list holds, containers, globals and
/// reduced objects; never ints, 1-character strings or the temporaries numpy's
/// `__reduce__` makes (argument tuples, the raw data string).
struct Cpickle {
    out: Vec<u8>,
    memo: u32,
}

impl Cpickle {
    fn new() -> Self {
        Self {
            out: vec![0x80, 2],
            memo: 0,
        }
    }

    fn op(&mut self, op: u8) {
        self.out.push(op);
    }

    /// BINPUT / LONG_BINPUT of the next memo number.
    fn put(&mut self) {
        self.memo += 1;
        if self.memo < 256 {
            self.out.extend([b'q', self.memo as u8]);
        } else {
            self.out.push(b'r');
            self.out.extend(self.memo.to_le_bytes());
        }
    }

    /// BININT1, BININT2 or BININT, the smallest that holds `v`.
    fn int(&mut self, v: i32) {
        match v {
            0..=0xff => self.out.extend([b'K', v as u8]),
            0x100..=0xffff => {
                self.out.push(b'M');
                self.out.extend((v as u16).to_le_bytes());
            }
            _ => {
                self.out.push(b'J');
                self.out.extend(v.to_le_bytes());
            }
        }
    }

    /// SHORT_BINSTRING or BINSTRING, not memoized.
    fn bytes(&mut self, s: &[u8]) {
        if s.len() < 256 {
            self.out.extend([b'U', s.len() as u8]);
        } else {
            self.out.push(b'T');
            self.out
                .extend(i32::try_from(s.len()).expect("under 2 GiB").to_le_bytes());
        }
        self.out.extend_from_slice(s);
    }

    /// A string a container holds: memoized unless it is 1 character long.
    fn string(&mut self, s: &[u8]) {
        self.bytes(s);
        if s.len() >= 2 {
            self.put();
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
        self.put();
    }

    /// EMPTY_LIST, then the items in batches of 1000: MARK .. APPENDS, a lone item APPEND.
    fn list<T>(&mut self, items: &[T], mut each: impl FnMut(&mut Self, &T)) {
        self.op(b']');
        self.put();
        for chunk in items.chunks(1000) {
            if let [one] = chunk {
                each(self, one);
                self.op(b'a');
            } else {
                self.op(b'(');
                for item in chunk {
                    each(self, item);
                }
                self.op(b'e');
            }
        }
    }

    /// A C-order numpy array of `shape` and type `descr` (`u1`, `f8`, ...) as numpy's
    /// `__reduce__` describes it.
    fn ndarray(&mut self, shape: &[usize], descr: &str, data: &[u8]) {
        self.global("numpy.core.multiarray", "_reconstruct");
        self.global("numpy", "ndarray");
        self.int(0);
        self.op(0x85); // TUPLE1
        self.bytes(b"b");
        self.op(0x87); // TUPLE3
        self.op(b'R');
        self.put();
        self.op(b'(');
        self.int(1);
        for &d in shape {
            self.int(d as i32);
        }
        self.op(0x84 + shape.len() as u8); // TUPLE1..3
        self.global("numpy", "dtype");
        self.bytes(descr.as_bytes());
        self.int(0);
        self.int(1);
        self.op(0x87);
        self.op(b'R');
        self.put();
        // (3, byte order, subarray, names, fields, elsize, alignment, flags)
        self.op(b'(');
        self.int(3);
        self.bytes(if descr.ends_with('1') { b"|" } else { b"<" });
        self.out.extend(b"NNN");
        self.int(-1);
        self.int(-1);
        self.int(0);
        self.op(b't');
        self.op(b'b');
        self.op(0x89); // NEWFALSE: not Fortran order
        self.bytes(data);
        self.op(b't');
        self.op(b'b');
    }

    fn finish(mut self) -> Vec<u8> {
        self.op(b'.');
        self.out
    }
}

/// A CIFAR-10 batch dict in the official files' key order (Python 2's hash order):
/// `batch_label`, `labels`, `data` (a `rows`x`cols` array of type `descr`), `filenames`.
pub(super) fn batch_pickle(
    batch_label: &str,
    labels: &[i64],
    data: &[u8],
    rows: usize,
    cols: usize,
    descr: &str,
    filenames: &[String],
) -> Vec<u8> {
    let mut p = Cpickle::new();
    p.op(b'}');
    p.put();
    p.op(b'(');
    p.string(b"batch_label");
    p.string(batch_label.as_bytes());
    p.string(b"labels");
    p.list(labels, |p, &l| p.int(l as i32));
    p.string(b"data");
    p.ndarray(&[rows, cols], descr, data);
    p.string(b"filenames");
    p.list(filenames, |p, f| p.string(f.as_bytes()));
    p.op(b'u');
    p.finish()
}

/// `batches.meta`: `num_cases_per_batch`, `label_names`, `num_vis`, in the official order.
fn meta_pickle(per_batch: usize, classes: &[String]) -> Vec<u8> {
    let mut p = Cpickle::new();
    p.op(b'}');
    p.put();
    p.op(b'(');
    p.string(b"num_cases_per_batch");
    p.int(per_batch as i32);
    p.string(b"label_names");
    p.list(classes, |p, c| p.string(c.as_bytes()));
    p.string(b"num_vis");
    p.int(3072);
    p.op(b'u');
    p.finish()
}

/// Base colours of the ten classes (RGB), and gray levels for one channel.
const PALETTE: [[i32; 3]; 10] = [
    [120, 160, 210],
    [200, 50, 50],
    [200, 180, 60],
    [150, 100, 70],
    [110, 140, 60],
    [210, 150, 110],
    [60, 170, 90],
    [120, 70, 40],
    [50, 80, 170],
    [170, 170, 180],
];
const GRAY: [i32; 10] = [40, 60, 80, 100, 120, 140, 160, 180, 200, 220];
/// Stripe directions (x, y steps) of the ten classes.
const DIRECTIONS: [(i64, i64); 10] = [
    (1, 0),
    (0, 1),
    (1, 1),
    (1, -1),
    (2, 1),
    (1, 2),
    (2, -1),
    (1, -2),
    (3, 1),
    (1, 3),
];

/// `n` square images of `k` classes, RGB or gray: labels near-balanced (each class `n/k`
/// times, shuffled, then one in eight drawn afresh), then each image painted.
fn draw(rng: &mut ChaCha8Rng, n: usize, k: usize, side: u32, rgb: bool) -> Images {
    let mut labels: Vec<u8> = (0..n).map(|i| (i % k) as u8).collect();
    shuffle(&mut labels, rng);
    for l in labels.iter_mut() {
        if below(rng, 8) == 0 {
            *l = below(rng, k) as u8;
        }
    }
    let channels = if rgb { 3 } else { 1 };
    let mut pixels = Vec::with_capacity(n * (side * side) as usize * channels);
    for &l in &labels {
        paint(rng, l as usize, side as usize, rgb, &mut pixels);
    }
    Images { pixels, labels }
}

/// One HWC image of `class`, in integer arithmetic only (the same bytes on every
/// platform): base colour, triangle-wave stripes, an inverted square, brightness and noise.
fn paint(rng: &mut ChaCha8Rng, class: usize, side: usize, rgb: bool, out: &mut Vec<u8>) {
    let class = class % 10;
    let gray = [GRAY[class]];
    let bases: &[i32] = if rgb { &PALETTE[class] } else { &gray };
    let (dx, dy) = DIRECTIONS[class];
    let period = ((4 + 2 * (class % 3)) * side / 32).max(3) as i64;
    let phase = below(rng, period as usize) as i64;
    let brightness = below(rng, 41) as i32 - 20;
    let square = (side / 4).max(1);
    let (sx, sy) = (below(rng, side), below(rng, side));
    let mut noise = vec![0u8; side * side * bases.len()];
    rng.fill_bytes(&mut noise);
    let mut noise = noise.into_iter();
    for y in 0..side {
        for x in 0..side {
            let t = (dx * x as i64 + dy * y as i64 + phase).rem_euclid(period);
            let stripe = ((2 * t - period).abs() * 255 / period) as i32;
            let in_square = (sx..sx + square).contains(&x) && (sy..sy + square).contains(&y);
            for &base in bases {
                let n = (noise.next().expect("a byte each") as i32 - 128) / 4;
                let mut v = (base * 3 / 5 + stripe * 2 / 5 + brightness + n).clamp(0, 255);
                if in_square {
                    v = 255 - v;
                }
                out.push(v as u8);
            }
        }
    }
}
