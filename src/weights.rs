//! Pretrained weights: reads torchvision's checkpoints (`torch.save` zip archives), checks
//! them against a model's backbone layout, and writes them as `.safetensors`, which the worker's
//! `Model::load_pretrained` loads (`idcctl weights import`).
//!
//! The checkpoint's pickle is read by the same stack machine as CIFAR-10's batches
//! (`crate::pickle`): nothing in it runs. Tensors keep their element type; only
//! C-contiguous views (any storage offset) are read, little-endian only.

use crate::pickle::{self, Pickle, Value};
use crate::store::{Store, StoreError};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Element type of a tensor, as torch stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dtype {
    F64,
    F32,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::F64 | Dtype::I64 => 8,
            Dtype::F32 | Dtype::I32 => 4,
            Dtype::F16 | Dtype::BF16 | Dtype::I16 => 2,
            Dtype::I8 | Dtype::U8 | Dtype::Bool => 1,
        }
    }

    /// torch's name: `float32`, `int64`, ...
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F64 => "float64",
            Dtype::F32 => "float32",
            Dtype::F16 => "float16",
            Dtype::BF16 => "bfloat16",
            Dtype::I64 => "int64",
            Dtype::I32 => "int32",
            Dtype::I16 => "int16",
            Dtype::I8 => "int8",
            Dtype::U8 => "uint8",
            Dtype::Bool => "bool",
        }
    }

    /// The element type of a torch storage class (`FloatStorage`, ...).
    fn of_storage(class: &str) -> Option<Self> {
        Some(match class {
            "DoubleStorage" => Dtype::F64,
            "FloatStorage" => Dtype::F32,
            "HalfStorage" => Dtype::F16,
            "BFloat16Storage" => Dtype::BF16,
            "LongStorage" => Dtype::I64,
            "IntStorage" => Dtype::I32,
            "ShortStorage" => Dtype::I16,
            "CharStorage" => Dtype::I8,
            "ByteStorage" => Dtype::U8,
            "BoolStorage" => Dtype::Bool,
            _ => return None,
        })
    }
}

const ALL: [Dtype; 10] = [
    Dtype::F64,
    Dtype::F32,
    Dtype::F16,
    Dtype::BF16,
    Dtype::I64,
    Dtype::I32,
    Dtype::I16,
    Dtype::I8,
    Dtype::U8,
    Dtype::Bool,
];

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor's element type, shape and C-contiguous little-endian bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorData {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl TensorData {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Models whose pretrained weights can be imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportModel {
    /// See [`Choice::about`](crate::choice::Choice::about), which `--help` shows.
    Resnet34,
}

impl crate::choice::Choice for ImportModel {
    const ALL: &'static [Self] = &[ImportModel::Resnet34];
    fn name(self) -> &'static str {
        match self {
            ImportModel::Resnet34 => "resnet34",
        }
    }
    fn about(self) -> Option<&'static str> {
        Some(match self {
            ImportModel::Resnet34 => {
                "torchvision's resnet34 (`resnet34-b627a593.pth`): the backbone; its 1000-class `fc` is dropped (the worker's head is new)"
            }
        })
    }
}
crate::choice_names!(ImportModel);

impl ImportModel {
    /// Every backbone tensor the model loads, with its shape.
    pub fn layout(self) -> Vec<(String, Vec<usize>)> {
        match self {
            ImportModel::Resnet34 => resnet34_backbone(),
        }
    }
}

/// The worker's ResNet34 backbone (`tch::vision::resnet::resnet34_no_final_layer`), head
/// excluded: torchvision's names and shapes, every BatchNorm with weight, bias, running_mean and
/// running_var (tch keeps no `num_batches_tracked`).
pub fn resnet34_backbone() -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let bn = |out: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for v in ["weight", "bias", "running_mean", "running_var"] {
            out.push((format!("{p}.{v}"), vec![c]));
        }
    };
    out.push(("conv1.weight".into(), vec![64, 3, 7, 7]));
    bn(&mut out, "bn1", 64);
    let mut c_in = 64;
    for (layer, (c, blocks)) in [(64, 3), (128, 4), (256, 6), (512, 3)]
        .into_iter()
        .enumerate()
    {
        for b in 0..blocks {
            let p = format!("layer{}.{b}", layer + 1);
            let first_in = if b == 0 { c_in } else { c };
            out.push((format!("{p}.conv1.weight"), vec![c, first_in, 3, 3]));
            bn(&mut out, &format!("{p}.bn1"), c);
            out.push((format!("{p}.conv2.weight"), vec![c, c, 3, 3]));
            bn(&mut out, &format!("{p}.bn2"), c);
            // tch (like torchvision) adds a downsample where the stride or width changes.
            if b == 0 && (layer > 0 || c_in != c) {
                out.push((format!("{p}.downsample.0.weight"), vec![c, c_in, 1, 1]));
                bn(&mut out, &format!("{p}.downsample.1"), c);
            }
        }
        c_in = c;
    }
    out
}

/// Why weights cannot be read or imported.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file cannot be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// An error in the file `path`.
    #[error("{}: {error}", path.display())]
    File {
        path: PathBuf,
        error: Box<WeightsError>,
    },
    /// Not a (readable) torch checkpoint: truncated, corrupt, legacy format, big-endian, ...
    #[error("{0}")]
    Format(String),
    /// Where the weights were to be written is no `.safetensors` object a run can open.
    #[error("cannot write the weights to {url}: {reason}")]
    Target { url: String, reason: String },
    /// The checkpoint holds something other than a state dict.
    #[error("not a state dict: the checkpoint holds {0}")]
    NotStateDict(String),
    /// One tensor cannot be read.
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    /// The state dict does not fit the model: every missing, mis-shaped and wrong-typed tensor.
    #[error("does not fit {model}: {}", mismatch(.missing, .misshaped, .wrong_dtype))]
    Mismatch {
        model: String,
        missing: Vec<String>,
        misshaped: Vec<String>,
        wrong_dtype: Vec<String>,
    },
}

fn mismatch(missing: &[String], misshaped: &[String], wrong_dtype: &[String]) -> String {
    [
        (missing, "missing", ", "),
        (misshaped, "mis-shaped", "; "),
        (wrong_dtype, "of the wrong dtype", "; "),
    ]
    .into_iter()
    .filter(|(v, _, _)| !v.is_empty())
    .map(|(v, what, sep)| format!("{} {what} [{}]", v.len(), v.join(sep)))
    .collect::<Vec<_>>()
    .join("; ")
}

impl crate::exit::ProcessExitCode for WeightsError {
    /// [`ExitCode::Failure`](crate::exit::ExitCode::Failure) when the file cannot be read (other
    /// than a missing file); [`ExitCode::UserError`](crate::exit::ExitCode::UserError) for a
    /// missing or bad file.
    fn process_exit_code(&self) -> crate::exit::ExitCode {
        use crate::exit::ExitCode;
        match self {
            WeightsError::Io { error, .. } if error.kind() != std::io::ErrorKind::NotFound => {
                ExitCode::Failure
            }
            WeightsError::File { error, .. } => error.process_exit_code(),
            _ => ExitCode::UserError,
        }
    }
}

fn format_err(s: impl Into<String>) -> WeightsError {
    WeightsError::Format(s.into())
}

/// The tensors of a `torch.save` zip archive (torch >= 1.6), in the order pickled: a state dict
/// (`OrderedDict` of name -> tensor), or a dict holding one under `state_dict` or `model` (a
/// training checkpoint). Entries of the state dict that are no tensors are skipped.
pub fn read_torch_checkpoint(bytes: &[u8]) -> Result<Vec<(String, TensorData)>, WeightsError> {
    let mut zip = TorchZip::open(bytes)?;
    let pkl = zip.pkl.clone();
    let data = zip
        .member(&pkl)?
        .ok_or_else(|| format_err(format!("member {pkl} is listed but cannot be found")))?;
    let p = pickle::parse(&data).map_err(|e| format_err(format!("{pkl}: {e}")))?;
    let state = state_dict(&p)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::new();
    for (k, v) in state {
        if !p.is_tensor(v) {
            continue;
        }
        let name = k.as_text().ok_or_else(|| {
            WeightsError::NotStateDict(format!("a key that is {}", p.describe(k)))
        })?;
        let bad = |reason: String| WeightsError::Tensor {
            name: name.clone(),
            reason,
        };
        let t = p
            .tensor(v)
            .map_err(|e| bad(e.trim_start_matches("is ").into()))?;
        let dtype = Dtype::of_storage(&t.storage_class).ok_or_else(|| {
            bad(format!(
                "storage class {} gives no element type (only typed storages are read)",
                t.storage_class
            ))
        })?;
        if !storages.contains_key(&t.key) {
            let file = format!("{}data/{}", zip.prefix, t.key);
            let s = zip
                .member(&file)?
                .ok_or_else(|| bad(format!("its storage {file} is missing from the archive")))?;
            storages.insert(t.key.clone(), s);
        }
        let tensor = tensor_data(&t, dtype, &storages[&t.key]).map_err(bad)?;
        out.push((name.clone(), tensor));
    }
    Ok(out)
}

/// A `torch.save` zip archive, its pickle found and its byte order checked.
struct TorchZip<'b> {
    zip: zip::ZipArchive<std::io::Cursor<&'b [u8]>>,
    /// The pickle's member, `…/data.pkl`, and the folder its storages lie in.
    pkl: String,
    prefix: String,
}

impl<'b> TorchZip<'b> {
    fn open(bytes: &'b [u8]) -> Result<Self, WeightsError> {
        if !bytes.starts_with(b"PK") {
            return Err(if bytes.first() == Some(&0x80) {
                format_err(
                    "legacy (pre-1.6) torch.save format: re-save with torch.save(..., _use_new_zipfile_serialization=True)",
                )
            } else {
                format_err("not a torch checkpoint (torch.save writes a zip archive)")
            });
        }
        let zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .map_err(|e| format_err(format!("truncated or corrupt zip archive: {e}")))?;
        let pkl = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_string)
            .ok_or_else(|| format_err("a zip archive without data.pkl: not a torch checkpoint"))?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let mut me = TorchZip { zip, pkl, prefix };
        if let Some(order) = me.member(&format!("{}byteorder", me.prefix))? {
            let order = String::from_utf8_lossy(&order);
            if order.trim() != "little" {
                return Err(format_err(format!(
                    "byte order '{}': only little-endian checkpoints are read",
                    order.trim()
                )));
            }
        }
        Ok(me)
    }

    /// The bytes of member `name`, `None` when there is none.
    fn member(&mut self, name: &str) -> Result<Option<Vec<u8>>, WeightsError> {
        let mut f = match self.zip.by_name(name) {
            Ok(f) => f,
            Err(zip::result::ZipError::FileNotFound) => return Ok(None),
            Err(e) => return Err(format_err(format!("member {name}: {e}"))),
        };
        // The size is the archive's word: a hostile one must not reserve terabytes up front.
        let mut buf =
            Vec::with_capacity(f.size().min(crate::dataset::archive::RESERVE_MAX) as usize);
        f.read_to_end(&mut buf)
            .map_err(|e| format_err(format!("member {name} is truncated or corrupt: {e}")))?;
        Ok(Some(buf))
    }
}

/// Tensor `t`'s elements of type `dtype`, cut from its `storage` once its layout is checked;
/// why not otherwise. Sizes and offsets are the checkpoint's word: every product and sum is
/// checked, so that hostile ones are errors, never overflows or slices out of bounds.
fn tensor_data(
    t: &pickle::TorchTensor,
    dtype: Dtype,
    storage: &[u8],
) -> Result<TensorData, String> {
    let storage_bytes = t
        .storage_numel
        .checked_mul(dtype.size())
        .ok_or_else(|| format!("its storage size {} overflows", t.storage_numel))?;
    if storage.len() < storage_bytes {
        return Err(format!(
            "its storage holds {} bytes, not the {storage_bytes} of {} {dtype} elements",
            storage.len(),
            t.storage_numel
        ));
    }
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("size {:?} overflows", t.shape))?;
    if t.shape.len() != t.stride.len() {
        return Err(format!(
            "size {:?} and stride {:?} differ in length",
            t.shape, t.stride
        ));
    }
    let mut expect = 1usize;
    for (d, (&n, &s)) in t.shape.iter().zip(&t.stride).enumerate().rev() {
        if n > 1 && s != expect {
            return Err(format!(
                "not C-contiguous (size {:?}, stride {:?}, dimension {d}): save tensor.contiguous()",
                t.shape, t.stride
            ));
        }
        // Saturating: with a zero size, the sizes' product fits where a suffix's may not.
        expect = expect.saturating_mul(n);
    }
    let bytes = if numel == 0 {
        Vec::new()
    } else {
        let elements = t.offset.checked_add(numel).and_then(|end| {
            Some((
                t.offset.checked_mul(dtype.size())?,
                end.checked_mul(dtype.size())?,
            ))
        });
        match elements {
            Some((begin, end)) if end <= storage_bytes => storage[begin..end].to_vec(),
            _ => {
                return Err(format!(
                    "elements {}..{} lie outside its storage of {}",
                    t.offset,
                    t.offset.saturating_add(numel),
                    t.storage_numel
                ));
            }
        }
    };
    Ok(TensorData {
        dtype,
        shape: t.shape.clone(),
        bytes,
    })
}

/// The state dict's items: the root dict, or the dict under its `state_dict` or `model` key.
fn state_dict<'p, 'a>(p: &'p Pickle<'a>) -> Result<&'p [(Value<'a>, Value<'a>)], WeightsError> {
    let Some(root) = p.dict(&p.root) else {
        return Err(WeightsError::NotStateDict(p.describe(&p.root)));
    };
    if root.iter().any(|(_, v)| p.is_tensor(v)) {
        return Ok(root);
    }
    for key in ["state_dict", "model"] {
        if let Some(inner) = p.get(&p.root, key).and_then(|v| p.dict(v))
            && inner.iter().any(|(_, v)| p.is_tensor(v))
        {
            return Ok(inner);
        }
    }
    Err(WeightsError::NotStateDict(
        "a dict without tensors (nor a state dict under 'state_dict' or 'model')".into(),
    ))
}

/// What [`import_summary`] made of a checkpoint.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model's tensors, in its layout's order.
    pub tensors: Vec<(String, TensorData)>,
    /// Checkpoint keys dropped as expected: `num_batches_tracked` buffers, the `fc.*` head.
    pub dropped: Vec<String>,
    /// Checkpoint keys the model has no use for (ignored).
    pub extra: Vec<String>,
    /// Whether the keys carried DataParallel's `module.` prefix.
    pub stripped_module_prefix: bool,
}

impl Imported {
    /// Parameters imported: elements of every tensor but BatchNorm's running statistics.
    pub fn parameters(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(n, _)| !is_running_stat(n))
            .map(|(_, t)| t.numel())
            .sum()
    }

    /// Elements of BatchNorm's running statistics (buffers, not parameters) imported.
    pub fn statistics(&self) -> usize {
        self.tensors
            .iter()
            .filter(|(n, _)| is_running_stat(n))
            .map(|(_, t)| t.numel())
            .sum()
    }

    /// Bytes of tensor data imported.
    pub fn bytes(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.bytes.len()).sum()
    }

    /// What the import changed or left out of the checkpoint, a line each: the stripped
    /// DataParallel prefix, the dropped keys (counters and the old head), the unused ones.
    pub fn notes(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.stripped_module_prefix {
            out.push("stripped DataParallel's 'module.' prefix from the keys".to_string());
        }
        if !self.dropped.is_empty() {
            let (counters, head): (Vec<&String>, Vec<&String>) = self
                .dropped
                .iter()
                .partition(|n| n.ends_with("num_batches_tracked"));
            let head: Vec<&str> = head.into_iter().map(String::as_str).collect();
            out.push(format!(
                "dropped {} keys: {} num_batches_tracked buffers{}",
                self.dropped.len(),
                counters.len(),
                if head.is_empty() {
                    String::new()
                } else {
                    format!(
                        ", the old head [{}] (the model's head is new)",
                        head.join(", ")
                    )
                }
            ));
        }
        if !self.extra.is_empty() {
            out.push(format!(
                "ignored {} keys the model has no use for: [{}]",
                self.extra.len(),
                self.extra.join(", ")
            ));
        }
        out
    }
}

fn is_running_stat(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The tensors `model` loads, taken from `checkpoint` (see [`import_summary`]).
pub fn import(
    checkpoint: &[(String, TensorData)],
    model: ImportModel,
) -> Result<Vec<(String, TensorData)>, WeightsError> {
    import_summary(checkpoint, model).map(|i| i.tensors)
}

/// Maps a state dict's tensors to `model`'s backbone: strips a `module.` prefix, drops
/// `num_batches_tracked` and the `fc.*` head, and checks that every tensor of the layout is
/// present, float32 and of its shape; the error lists every one that is not.
pub fn import_summary(
    checkpoint: &[(String, TensorData)],
    model: ImportModel,
) -> Result<Imported, WeightsError> {
    let layout = model.layout();
    let shapes: HashMap<&str, &[usize]> = layout
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut given: HashMap<&str, &TensorData> = HashMap::new();
    let (mut dropped, mut extra) = (vec![], vec![]);
    let mut stripped = false;
    for (name, t) in checkpoint {
        let n = match name.strip_prefix("module.") {
            Some(n) => {
                stripped = true;
                n
            }
            None => name.as_str(),
        };
        if shapes.contains_key(n) {
            given.insert(n, t);
        } else if n.ends_with("num_batches_tracked") || n.starts_with("fc.") {
            dropped.push(name.clone());
        } else {
            extra.push(name.clone());
        }
    }
    let (mut missing, mut misshaped, mut wrong_dtype) = (vec![], vec![], vec![]);
    let mut tensors = Vec::with_capacity(layout.len());
    for (name, shape) in &layout {
        match given.get(name.as_str()) {
            None => missing.push(name.clone()),
            Some(t) => {
                let mut ok = true;
                if &t.shape != shape {
                    misshaped.push(format!("{name}: file {:?}, model {shape:?}", t.shape));
                    ok = false;
                }
                if t.dtype != Dtype::F32 {
                    wrong_dtype.push(format!("{name}: file {}, model float32", t.dtype));
                    ok = false;
                }
                if ok {
                    tensors.push((name.clone(), (*t).clone()));
                }
            }
        }
    }
    if !missing.is_empty() || !misshaped.is_empty() || !wrong_dtype.is_empty() {
        return Err(WeightsError::Mismatch {
            model: format!("{model:?}").to_lowercase(),
            missing,
            misshaped,
            wrong_dtype,
        });
    }
    Ok(Imported {
        tensors,
        dropped,
        extra,
        stripped_module_prefix: stripped,
    })
}

/// Reads the checkpoint at `path` and imports it for `model`; errors name the file.
pub fn import_file(path: &Path, model: ImportModel) -> Result<Imported, WeightsError> {
    let bytes = std::fs::read(path).map_err(|error| WeightsError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    read_torch_checkpoint(&bytes)
        .and_then(|c| import_summary(&c, model))
        .map_err(|e| WeightsError::File {
            path: path.to_path_buf(),
            error: Box::new(e),
        })
}

/// Where `idcctl weights import` writes the object at `url`: its folder's store and its name,
/// opened as a run opens a `train.model.pretrained` URL ([`Store::open_object`]), so that
/// what is written there loads. The name must end in `.safetensors`: the worker picks its
/// loader by it.
pub fn import_target(url: &str) -> Result<(Store, String), WeightsError> {
    let target = |reason: String| WeightsError::Target {
        url: crate::store::redact(url),
        reason,
    };
    let (store, name) = Store::open_object(url).map_err(|e| {
        target(match e {
            StoreError::BadUrl { reason, .. } => format!(
                "{reason} (name the object, e.g. s3://bucket/weights/resnet34-imagenet.safetensors)"
            ),
            e => e.to_string(),
        })
    })?;
    if !name.ends_with(".safetensors") || name == ".safetensors" {
        return Err(target(
            "the object's name must end in .safetensors (the worker picks the loader by it)".into(),
        ));
    }
    Ok((store, name))
}

impl Dtype {
    /// The safetensors crate's element type.
    fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            Dtype::F64 => S::F64,
            Dtype::F32 => S::F32,
            Dtype::F16 => S::F16,
            Dtype::BF16 => S::BF16,
            Dtype::I64 => S::I64,
            Dtype::I32 => S::I32,
            Dtype::I16 => S::I16,
            Dtype::I8 => S::I8,
            Dtype::U8 => S::U8,
            Dtype::Bool => S::BOOL,
        }
    }

    /// The element type of a safetensors dtype (None: one torch checkpoints do not hold).
    fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        ALL.into_iter().find(|t| t.to_safetensors() == d)
    }
}

/// The tensors as a `.safetensors` file (`safetensors::serialize`): an 8-byte little-endian
/// header length, the JSON header (`__metadata__` `{"format": "pt"}`, then `{name: {dtype,
/// shape, data_offsets}}`, padded with spaces to a multiple of 8 bytes), then the data, by
/// descending element size and then by name. A tensor whose bytes do not fit its shape is named.
pub fn write_safetensors(tensors: &[(String, TensorData)]) -> Result<Vec<u8>, WeightsError> {
    let views = tensors
        .iter()
        .map(|(name, t)| {
            safetensors::tensor::TensorView::new(
                t.dtype.to_safetensors(),
                t.shape.clone(),
                &t.bytes,
            )
            .map(|v| (name.as_str(), v))
            .map_err(|e| WeightsError::Tensor {
                name: name.clone(),
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // torch's own writer marks its files so.
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(metadata))
        .map_err(|e| format_err(format!("cannot write a safetensors file: {e}")))
}

/// The tensors of a `.safetensors` file (`SafeTensors::deserialize`), sorted by name.
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, TensorData)>, WeightsError> {
    let file = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| format_err(format!("not a safetensors file: {e}")))?;
    let mut out = file
        .iter()
        .map(|(name, t)| {
            let dtype = Dtype::from_safetensors(t.dtype()).ok_or_else(|| WeightsError::Tensor {
                name: name.to_string(),
                reason: format!(
                    "element type {:?} is not one torch checkpoints hold",
                    t.dtype()
                ),
            })?;
            Ok((
                name.to_string(),
                TensorData {
                    dtype,
                    shape: t.shape().to_vec(),
                    bytes: t.data().to_vec(),
                },
            ))
        })
        .collect::<Result<Vec<_>, WeightsError>>()?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ProcessExitCode;

    #[test]
    fn import_targets_open_where_a_run_reads_them() {
        for (url, store, name) in [
            (
                "s3://idc/weights/r.safetensors",
                "s3://idc/weights",
                "r.safetensors",
            ),
            ("s3://idc/r.safetensors", "s3://idc", "r.safetensors"),
            (
                "file:///tmp/w/r.safetensors",
                "file:///tmp/w",
                "r.safetensors",
            ),
            // At the root of its URL: written there, and read from there by a run.
            ("file:///r.safetensors", "file:///", "r.safetensors"),
        ] {
            let (s, n) = import_target(url).unwrap();
            assert_eq!((s.url(), n.as_str()), (store, name), "{url}");
            assert_eq!(s.url_of(&n), url);
        }
        let cwd = std::env::current_dir().unwrap();
        for url in [
            "r.safetensors",
            "file://r.safetensors",
            "file://./r.safetensors",
        ] {
            let (s, n) = import_target(url).unwrap();
            assert_eq!(s.url(), format!("file://{}", cwd.display()), "{url}");
            assert_eq!(n, "r.safetensors");
        }
        for (url, want) in [
            ("s3://idc/weights/r.pth", "must end in .safetensors"),
            ("s3://r.safetensors", "names a bucket, not an object"),
            ("s3://idc/weights/", "names a folder"),
            ("gs://idc/r.safetensors", "unsupported scheme 'gs'"),
        ] {
            let e = import_target(url).unwrap_err();
            assert!(e.to_string().contains(want), "{url}: {e}");
            assert_eq!(
                e.process_exit_code(),
                crate::exit::ExitCode::UserError,
                "{url}"
            );
        }
    }

    fn f32s(shape: &[usize], seed: f32) -> TensorData {
        let n: usize = shape.iter().product();
        TensorData {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: (0..n)
                .flat_map(|i| (seed + i as f32).to_le_bytes())
                .collect(),
        }
    }

    fn full_checkpoint(prefix: &str) -> Vec<(String, TensorData)> {
        let mut c: Vec<(String, TensorData)> = resnet34_backbone()
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| (format!("{prefix}{n}"), f32s(&s, i as f32)))
            .collect();
        c.push((
            format!("{prefix}bn1.num_batches_tracked"),
            TensorData {
                dtype: Dtype::I64,
                shape: vec![],
                bytes: vec![0; 8],
            },
        ));
        c.push((format!("{prefix}fc.weight"), f32s(&[1000, 512], 0.0)));
        c.push((format!("{prefix}fc.bias"), f32s(&[1000], 0.0)));
        c
    }

    #[test]
    fn weights_resnet34_layout_is_torchvisions() {
        let l = resnet34_backbone();
        // torchvision's resnet34 state dict: 218 keys = 180 here + 36 num_batches_tracked + fc.
        assert_eq!(l.len(), 180);
        let params: usize = l
            .iter()
            .filter(|(n, _)| !n.contains("running_"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // 21,797,672 parameters with the 512 x 1000 + 1000 head.
        assert_eq!(params + 512 * 1000 + 1000, 21_797_672);
        let names: Vec<&str> = l.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "conv1.weight",
            "bn1.running_var",
            "layer1.2.bn2.bias",
            "layer2.0.downsample.0.weight",
            "layer2.0.downsample.1.running_mean",
            "layer3.5.conv2.weight",
            "layer4.2.bn2.weight",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        assert!(!names.iter().any(|n| n.starts_with("layer1.0.downsample")));
        let shape = |n: &str| &l.iter().find(|(x, _)| x == n).unwrap().1;
        assert_eq!(shape("layer3.0.conv1.weight"), &[256, 128, 3, 3]);
        assert_eq!(shape("layer4.0.downsample.0.weight"), &[512, 256, 1, 1]);
    }

    #[test]
    fn weights_import_drops_head_and_counters_and_strips_module() {
        for prefix in ["", "module."] {
            let c = full_checkpoint(prefix);
            let i = import_summary(&c, ImportModel::Resnet34).unwrap();
            assert_eq!(i.tensors.len(), 180);
            assert_eq!(i.dropped.len(), 3);
            assert!(i.extra.is_empty());
            assert_eq!(i.stripped_module_prefix, !prefix.is_empty());
            assert_eq!(i.tensors[0].0, "conv1.weight");
            assert_eq!(i.tensors[0].1, c[0].1);
            assert_eq!(i.parameters(), 21_797_672 - 513_000);
            assert_eq!(i.statistics(), 2 * 8512);
            assert_eq!(i.bytes(), 4 * (21_797_672 - 513_000 + 2 * 8512));
        }
    }

    #[test]
    fn weights_import_lists_every_mismatch() {
        let mut c = full_checkpoint("");
        c.retain(|(n, _)| n != "layer4.2.bn2.weight" && n != "layer1.0.conv1.weight");
        c[0].1 = f32s(&[64, 1, 7, 7], 0.0);
        c[1].1.dtype = Dtype::F64;
        c.push(("extra.thing".into(), f32s(&[1], 0.0)));
        let e = import(&c, ImportModel::Resnet34).unwrap_err();
        assert_eq!(e.process_exit_code(), crate::exit::ExitCode::UserError);
        assert_eq!(
            e.to_string(),
            "does not fit resnet34: 2 missing [layer1.0.conv1.weight, layer4.2.bn2.weight]; \
             1 mis-shaped [conv1.weight: file [64, 1, 7, 7], model [64, 3, 7, 7]]; \
             1 of the wrong dtype [bn1.weight: file float64, model float32]"
        );
    }

    #[test]
    fn weights_safetensors_round_trip() {
        let t = vec![
            ("b".to_string(), f32s(&[2, 3], 1.0)),
            ("a".to_string(), f32s(&[4], 7.0)),
            (
                "c".to_string(),
                TensorData {
                    dtype: Dtype::BF16,
                    shape: vec![1],
                    bytes: vec![1, 2],
                },
            ),
        ];
        let bytes = write_safetensors(&t).unwrap();
        let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + len) % 8, 0);
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
        assert_eq!(header["a"]["data_offsets"], serde_json::json!([0, 16]));
        assert_eq!(header["b"]["dtype"], "F32");
        let mut sorted = t.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(read_safetensors(&bytes).unwrap(), sorted);
    }

    #[test]
    fn weights_rejects_non_checkpoints() {
        let e = read_torch_checkpoint(&[0x80, 2, 0x8a, 0x0a]).unwrap_err();
        assert!(e.to_string().contains("legacy (pre-1.6)"), "{e}");
        let e = read_torch_checkpoint(b"hello").unwrap_err();
        assert!(e.to_string().contains("not a torch checkpoint"), "{e}");
        let e = read_torch_checkpoint(b"PK\x03\x04truncated").unwrap_err();
        assert!(e.to_string().contains("truncated or corrupt zip"), "{e}");
        assert_eq!(e.process_exit_code(), crate::exit::ExitCode::UserError);
    }

    /// tests/fixtures/weights/tiny.pth (written by make.py there with torch 2.11): views into one
    /// storage, an int64 scalar, float16/bfloat16, a nn.Module state dict with `_metadata`.
    #[test]
    fn weights_reads_torch_zip_checkpoint() {
        let bytes = crate::fuzz::TINY_PTH;
        let t = read_torch_checkpoint(bytes).unwrap();
        let names: Vec<&str> = t.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "lin.weight",
                "lin.bias",
                "bn.weight",
                "bn.bias",
                "bn.running_mean",
                "bn.running_var",
                "bn.num_batches_tracked",
                "view",
                "half",
                "bf16"
            ]
        );
        let get = |n: &str| &t.iter().find(|(x, _)| x == n).unwrap().1;
        let floats = |t: &TensorData| -> Vec<f32> {
            t.bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let w = get("lin.weight");
        assert_eq!(
            (w.dtype, w.shape.as_slice()),
            (Dtype::F32, &[2usize, 3][..])
        );
        assert_eq!(floats(w), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let v = get("view");
        assert_eq!(v.shape, [2, 2]);
        assert_eq!(floats(v), [12.0, 13.0, 14.0, 15.0]);
        let n = get("bn.num_batches_tracked");
        assert_eq!((n.dtype, n.shape.len()), (Dtype::I64, 0));
        assert_eq!(n.bytes, 7i64.to_le_bytes());
        let h = get("half");
        assert_eq!(
            (h.dtype, h.bytes.as_slice()),
            (Dtype::F16, &[0, 0x3c, 0, 0x40][..])
        );
        let b = get("bf16");
        assert_eq!(
            (b.dtype, b.bytes.as_slice()),
            (Dtype::BF16, &[0x80, 0x3f][..])
        );
    }

    #[test]
    fn weights_rejects_non_contiguous_tensor() {
        let bytes = include_bytes!("../tests/fixtures/weights/transposed.pth");
        let e = read_torch_checkpoint(bytes).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("tensor t: not C-contiguous"), "{msg}");
    }

    mod fuzz {
        use super::*;
        use crate::fuzz::{bytes, config, corrupted};
        use proptest::prelude::*;
        use std::io::Write;

        use crate::fuzz::TINY_PTH as TINY;

        /// tiny.pth with its members as they are but `data.pkl` replaced by `pkl` (stored), so
        /// that a corrupted pickle gets past the zip's checksums.
        fn with_pickle(pkl: &[u8]) -> Vec<u8> {
            let mut zip = zip::ZipArchive::new(std::io::Cursor::new(TINY)).unwrap();
            let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Stored);
            for i in 0..zip.len() {
                let mut f = zip.by_index(i).unwrap();
                let name = f.name().to_string();
                let mut data = vec![];
                std::io::Read::read_to_end(&mut f, &mut data).unwrap();
                out.start_file(name.as_str(), opts).unwrap();
                out.write_all(if name.ends_with("data.pkl") {
                    pkl
                } else {
                    &data
                })
                .unwrap();
            }
            out.finish().unwrap().into_inner()
        }

        /// A checkpoint is read (and imported), or refused, never a panic.
        fn read(b: &[u8]) {
            if let Ok(t) = read_torch_checkpoint(b) {
                for (_, t) in &t {
                    assert_eq!(t.bytes.len(), t.numel() * t.dtype.size());
                }
                drop(import_summary(&t, ImportModel::Resnet34));
            }
        }

        #[test]
        fn the_rezipped_fixture_reads() {
            assert_eq!(
                read_torch_checkpoint(&with_pickle(&crate::fuzz::tiny_pickle())).unwrap(),
                read_torch_checkpoint(TINY).unwrap()
            );
        }

        proptest! {
            #![proptest_config(config(128))]

            #[test]
            fn any_bytes(b in bytes(256)) {
                read(&b);
                let mut zipped = b"PK\x03\x04".to_vec();
                zipped.extend(b);
                read(&zipped);
            }

            #[test]
            fn corrupted_archives(b in corrupted(TINY.to_vec())) {
                read(&b);
            }

            #[test]
            fn corrupted_pickles(pkl in corrupted(crate::fuzz::tiny_pickle())) {
                read(&with_pickle(&pkl));
            }

            #[test]
            fn corrupted_safetensors(b in corrupted(
                write_safetensors(&read_torch_checkpoint(TINY).unwrap()).unwrap()
            )) {
                if let Ok(t) = read_safetensors(&b) {
                    for (_, t) in &t {
                        assert_eq!(t.bytes.len(), t.numel() * t.dtype.size());
                    }
                }
            }

            #[test]
            fn any_safetensors(b in bytes(256)) {
                drop(read_safetensors(&b));
            }
        }
    }
}
