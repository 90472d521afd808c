//! A Python pickle reader, for what CIFAR-10's batches and `torch.save` checkpoints hold (so
//! staging and the weights import share it): dicts (and `OrderedDict`s), lists, tuples, byte and
//! text strings, numbers, numpy arrays and torch tensors. It is the unpickling stack machine
//! restricted to opcodes of protocols 0-4 that such data uses, and to a handful of globals: numpy's
//! array and dtype reconstructors, the two ways Python 3 writes bytes in protocol 2,
//! `collections.OrderedDict`, torch's tensor rebuilders and storage classes. No code runs: an array
//! is recorded from its reduce arguments and `BUILD` state, a tensor from its rebuild arguments,
//! and a persistent id (`PERSID`, `BINPERSID`: how torch names a storage kept outside the pickle)
//! is kept as the id itself.
//!
//! Strings and bytes borrow from the input, so a batch's 30 MB of pixels are not copied.

use std::collections::HashMap;
use std::rc::Rc;

/// A byte string: borrowed from the pickle, or decoded from a text string (`_codecs.encode`).
#[derive(Debug, Clone)]
pub enum Bytes<'a> {
    Borrowed(&'a [u8]),
    Owned(Rc<Vec<u8>>),
}

impl Bytes<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }
}

/// A Python object. Containers and reconstructed objects live in the [`Pickle`]'s heap and
/// are named by index: the memo shares them as Python does (the memo holds the same list
/// that later `APPENDS` fill), and however deep a hostile pickle nests them, nothing
/// recurses, not even dropping them.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Bytes(Bytes<'a>),
    Str(&'a str),
    Tuple(usize),
    List(usize),
    Dict(usize),
    /// A module-level name, one of the few [`global`] admits.
    Global(&'a str, &'a str),
    Object(usize),
}

/// The containers and objects a pickle built.
#[derive(Debug, Default)]
struct Heap<'a> {
    tuples: Vec<Vec<Value<'a>>>,
    lists: Vec<Vec<Value<'a>>>,
    /// Items in insertion order; lookups take the last of equal keys, as Python's dict keeps.
    dicts: Vec<Vec<(Value<'a>, Value<'a>)>>,
    objects: Vec<Object<'a>>,
}

/// The result of a `REDUCE` of a known constructor, with the state `BUILD` gives it.
#[derive(Debug)]
struct Object<'a> {
    kind: Kind<'a>,
    state: Option<Value<'a>>,
}

#[derive(Debug)]
enum Kind<'a> {
    NdArray,
    /// A numpy dtype and the type string it was made from (`u1`, `f8`, ...).
    Dtype(String),
    /// What a persistent id names, never loaded here: the id as pickled.
    Persistent(Value<'a>),
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: its arguments.
    Tensor(Vec<Value<'a>>),
}

/// A torch tensor as pickled: a view of a storage kept outside the pickle (in a zip
/// checkpoint, the member `data/<key>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchTensor {
    /// The storage's class name, which gives the element type: `FloatStorage`, `HalfStorage`,
    /// `UntypedStorage`, ...
    pub storage_class: String,
    /// The storage's key: its file name under `data/`.
    pub key: String,
    /// Elements in the storage.
    pub storage_numel: usize,
    /// Offset of the tensor's first element in the storage, in elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    pub stride: Vec<usize>,
}

/// A numpy array as pickled: `dtype` is numpy's type string with its byte order (`|u1`).
#[derive(Debug)]
pub struct NdArray<'a> {
    pub shape: Vec<usize>,
    pub dtype: String,
    pub fortran: bool,
    pub data: Bytes<'a>,
}

impl Value<'_> {
    /// An integer (not a bool).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A text or UTF-8 byte string.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Value::Str(s) => Some(s.to_string()),
            Value::Bytes(b) => std::str::from_utf8(b.as_slice()).ok().map(str::to_string),
            _ => None,
        }
    }

    /// The bytes of a byte or text string, to match dict keys either way.
    pub fn as_key(&self) -> Option<&[u8]> {
        match self {
            Value::Str(s) => Some(s.as_bytes()),
            Value::Bytes(b) => Some(b.as_slice()),
            _ => None,
        }
    }
}

impl<'a> Heap<'a> {
    fn describe(&self, v: &Value) -> String {
        match v {
            Value::None => "None".into(),
            Value::Bool(_) => "a bool".into(),
            Value::Int(_) => "an integer".into(),
            Value::Float(f) => format!("the float {f}"),
            Value::Bytes(_) => "a byte string".into(),
            Value::Str(_) => "a string".into(),
            Value::Tuple(_) => "a tuple".into(),
            Value::List(_) => "a list".into(),
            Value::Dict(_) => "a dict".into(),
            Value::Global(m, n) => format!("{m}.{n}"),
            Value::Object(o) => match self.objects[*o].kind {
                Kind::NdArray => "a numpy array".into(),
                Kind::Dtype(_) => "a numpy dtype".into(),
                Kind::Persistent(_) => "a persistent reference".into(),
                Kind::Tensor(_) => "a torch tensor".into(),
            },
        }
    }

    fn tuple(&self, v: &Value<'a>) -> Option<&[Value<'a>]> {
        match v {
            Value::Tuple(t) => Some(&self.tuples[*t]),
            _ => None,
        }
    }
}

/// What a pickle built: its top object, and the containers and objects under it.
#[derive(Debug)]
pub struct Pickle<'a> {
    pub root: Value<'a>,
    heap: Heap<'a>,
}

impl<'a> Pickle<'a> {
    /// What `v` is, for messages: "a list", "a numpy array", ...
    pub fn describe(&self, v: &Value) -> String {
        self.heap.describe(v)
    }

    /// The items of a list.
    pub fn list(&self, v: &Value<'a>) -> Option<&[Value<'a>]> {
        match v {
            Value::List(l) => Some(&self.heap.lists[*l]),
            _ => None,
        }
    }

    /// The items of a tuple.
    pub fn tuple(&self, v: &Value<'a>) -> Option<&[Value<'a>]> {
        self.heap.tuple(v)
    }

    /// The items of a dict, in insertion order.
    pub fn dict(&self, v: &Value<'a>) -> Option<&[(Value<'a>, Value<'a>)]> {
        match v {
            Value::Dict(d) => Some(&self.heap.dicts[*d]),
            _ => None,
        }
    }

    /// `dict[key]` for a byte or text string key, the last of equal keys as in Python; `None`
    /// when `dict` is no dict or has no such key.
    pub fn get(&self, dict: &Value<'a>, key: &str) -> Option<&Value<'a>> {
        self.dict(dict)?
            .iter()
            .rev()
            .find(|(k, _)| k.as_key() == Some(key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The array `v` is, from the state numpy pickles:
    /// `(version, shape, dtype, is_fortran, raw bytes)`, or the same without the version.
    pub fn ndarray(&self, v: &Value<'a>) -> Result<NdArray<'a>, String> {
        let not = || format!("is {}, not a numpy array", self.describe(v));
        let Value::Object(o) = v else {
            return Err(not());
        };
        let array = &self.heap.objects[*o];
        let Kind::NdArray = array.kind else {
            return Err(not());
        };
        let t = array
            .state
            .as_ref()
            .and_then(|s| self.tuple(s))
            .ok_or("is a numpy array without its pickled state")?;
        let t = match t.len() {
            5 => &t[1..],
            4 => t,
            n => return Err(format!("is a numpy array with a state of {n} items")),
        };
        let shape = self
            .tuple(&t[0])
            .and_then(|d| {
                d.iter()
                    .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
                    .collect::<Option<Vec<usize>>>()
            })
            .ok_or("is a numpy array with a malformed shape")?;
        let dtype = match &t[1] {
            Value::Object(d) => match &self.heap.objects[*d] {
                Object {
                    kind: Kind::Dtype(descr),
                    ..
                } if descr.starts_with(['|', '<', '>', '=']) => Some(descr.clone()),
                Object {
                    kind: Kind::Dtype(descr),
                    state,
                } => {
                    // The byte order is the second item of the dtype's state.
                    let order = state
                        .as_ref()
                        .and_then(|s| self.tuple(s))
                        .and_then(|s| s.get(1))
                        .and_then(Value::as_text)
                        .unwrap_or_default();
                    Some(format!("{order}{descr}"))
                }
                _ => None,
            },
            _ => None,
        }
        .ok_or("is a numpy array without a dtype")?;
        let fortran = match &t[2] {
            Value::Bool(b) => *b,
            Value::Int(i) => *i != 0,
            v => {
                return Err(format!(
                    "is a numpy array whose order flag is {}",
                    self.describe(v)
                ));
            }
        };
        let data = match &t[3] {
            Value::Bytes(b) => b.clone(),
            Value::List(_) => return Err("is a numpy array of Python objects".into()),
            v => {
                return Err(format!(
                    "is a numpy array whose data is {}",
                    self.describe(v)
                ));
            }
        };
        Ok(NdArray {
            shape,
            dtype,
            fortran,
            data,
        })
    }
}

impl<'a> Pickle<'a> {
    /// Whether `v` is a torch tensor (what [`Pickle::tensor`] reads).
    pub fn is_tensor(&self, v: &Value<'a>) -> bool {
        matches!(v, Value::Object(o) if matches!(self.heap.objects[*o].kind, Kind::Tensor(_)))
    }

    /// The tensor `v` is, from `_rebuild_tensor_v2`'s arguments: `(storage, storage_offset,
    /// size, stride, ...)`, the storage being the persistent id
    /// `('storage', storage_class, key, location, numel)`.
    pub fn tensor(&self, v: &Value<'a>) -> Result<TorchTensor, String> {
        let args = match v {
            Value::Object(o) => match &self.heap.objects[*o].kind {
                Kind::Tensor(args) => args,
                _ => return Err(format!("is {}, not a torch tensor", self.describe(v))),
            },
            _ => return Err(format!("is {}, not a torch tensor", self.describe(v))),
        };
        let [storage, offset, size, stride, ..] = args.as_slice() else {
            return Err(format!(
                "is a torch tensor rebuilt from {} arguments",
                args.len()
            ));
        };
        let pid = match storage {
            Value::Object(o) => match &self.heap.objects[*o].kind {
                Kind::Persistent(pid) => self.tuple(pid),
                _ => None,
            },
            _ => None,
        }
        .ok_or("is a torch tensor whose storage is no persistent reference")?;
        let (class, key, numel) = match pid {
            [tag, class, key, _location, numel, ..]
                if tag.as_text().as_deref() == Some("storage") =>
            {
                (class, key, numel)
            }
            _ => return Err("is a torch tensor with a malformed storage reference".into()),
        };
        let storage_class = match class {
            Value::Global(_, name) => name.to_string(),
            v => {
                return Err(format!(
                    "is a torch tensor whose storage class is {}",
                    self.describe(v)
                ));
            }
        };
        let key = key
            .as_text()
            .or_else(|| key.as_int().map(|i| i.to_string()))
            .ok_or("is a torch tensor with a malformed storage key")?;
        let count = |v: &Value, what: &str| {
            v.as_int()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| format!("is a torch tensor with a malformed {what}"))
        };
        let dims = |v: &Value<'a>, what: &str| {
            self.tuple(v)
                .and_then(|d| {
                    d.iter()
                        .map(|v| v.as_int().and_then(|i| usize::try_from(i).ok()))
                        .collect::<Option<Vec<usize>>>()
                })
                .ok_or_else(|| format!("is a torch tensor with a malformed {what}"))
        };
        Ok(TorchTensor {
            storage_class,
            key,
            storage_numel: count(numel, "storage size")?,
            offset: count(offset, "storage offset")?,
            shape: dims(size, "size")?,
            stride: dims(stride, "stride")?,
        })
    }
}

/// numpy's name of a type string: `<f8` is float64, `|u1` uint8.
pub fn dtype_name(descr: &str) -> String {
    let d = descr.trim_start_matches(['|', '<', '>', '=']);
    let (kind, size) = d.split_at(d.find(|c: char| c.is_ascii_digit()).unwrap_or(d.len()));
    let bits = size.parse::<u32>().ok().map(|s| s * 8);
    match (kind, bits) {
        ("b", Some(8)) => "bool".into(),
        ("u", Some(b)) => format!("uint{b}"),
        ("i", Some(b)) => format!("int{b}"),
        ("f", Some(b)) => format!("float{b}"),
        ("c", Some(b)) => format!("complex{b}"),
        ("O", _) => "object".into(),
        ("S" | "a", _) => "bytes".into(),
        ("U", _) => "str".into(),
        _ => format!("dtype '{descr}'"),
    }
}

/// Why a pickle cannot be read, and where.
#[derive(Debug)]
pub struct Error {
    pub at: usize,
    pub what: String,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// Runs the pickle in `buf` to its `STOP` and returns what it built.
pub fn parse(buf: &[u8]) -> Result<Pickle<'_>, Error> {
    if buf.is_empty() {
        return Err(Error {
            at: 0,
            what: "empty".into(),
        });
    }
    let mut m = Machine {
        buf,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Heap::default(),
    };
    loop {
        let at = m.pos;
        match m.step() {
            Ok(Some(root)) => {
                return Ok(Pickle { root, heap: m.heap });
            }
            Ok(None) => {}
            Err(what) => return Err(Error { at, what }),
        }
    }
}

struct Machine<'a> {
    buf: &'a [u8],
    pos: usize,
    stack: Vec<Value<'a>>,
    /// Stack lengths at each open MARK. Nothing below the last one may be popped, as in
    /// Python 3's unpickler.
    marks: Vec<usize>,
    memo: HashMap<u64, Value<'a>>,
    heap: Heap<'a>,
}

type Step<'a> = Result<Option<Value<'a>>, String>;

impl<'a> Machine<'a> {
    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(format!("truncated: {n} bytes announced, {left} left"));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let s = self.take(N as u64)?;
        Ok(s.try_into().expect("N bytes taken"))
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// The argument of a text opcode (protocol 0): up to the newline.
    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated: no newline after a text argument")?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "text argument is not UTF-8".into())
    }

    fn text_int(&mut self) -> Result<i64, String> {
        let line = self.line()?;
        line.trim()
            .parse()
            .map_err(|_| format!("bad integer {line:?}"))
    }

    fn utf8(&mut self, n: u64) -> Result<Value<'a>, String> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Value::Str)
            .map_err(|e| format!("string is not UTF-8: {e}"))
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value<'a>, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Result<&Value<'a>, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.last().expect("checked"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<'a>>, String> {
        let mark = self.marks.pop().ok_or("no MARK to pop to")?;
        Ok(self.stack.split_off(mark))
    }

    fn pop_n(&mut self, n: usize) -> Result<Vec<Value<'a>>, String> {
        if self.stack.len() < self.floor() + n {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn push(&mut self, v: Value<'a>) -> Step<'a> {
        self.stack.push(v);
        Ok(None)
    }

    fn put(&mut self, key: u64) -> Step<'a> {
        let v = self.top()?.clone();
        self.memo.insert(key, v);
        Ok(None)
    }

    fn get(&mut self, key: u64) -> Step<'a> {
        let v = self
            .memo
            .get(&key)
            .cloned()
            .ok_or_else(|| format!("memo entry {key} read before it was stored"))?;
        self.push(v)
    }

    /// The list on top of the stack.
    fn top_list(&mut self) -> Result<&mut Vec<Value<'a>>, String> {
        match self.top()? {
            &Value::List(l) => Ok(&mut self.heap.lists[l]),
            v => Err(format!("append to {}", self.heap.describe(v))),
        }
    }

    /// The dict on top of the stack.
    fn top_dict(&mut self) -> Result<&mut Vec<(Value<'a>, Value<'a>)>, String> {
        match self.top()? {
            &Value::Dict(d) => Ok(&mut self.heap.dicts[d]),
            v => Err(format!("set an item of {}", self.heap.describe(v))),
        }
    }

    fn new_tuple(&mut self, items: Vec<Value<'a>>) -> Step<'a> {
        self.heap.tuples.push(items);
        self.push(Value::Tuple(self.heap.tuples.len() - 1))
    }

    fn new_list(&mut self, items: Vec<Value<'a>>) -> Step<'a> {
        self.heap.lists.push(items);
        self.push(Value::List(self.heap.lists.len() - 1))
    }

    fn new_dict(&mut self, items: Vec<(Value<'a>, Value<'a>)>) -> Step<'a> {
        self.heap.dicts.push(items);
        self.push(Value::Dict(self.heap.dicts.len() - 1))
    }

    fn pairs(items: Vec<Value<'a>>) -> Result<Vec<(Value<'a>, Value<'a>)>, String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of items for a dict".into());
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn step(&mut self) -> Step<'a> {
        let op = self
            .u8()
            .map_err(|_| "ends without a STOP opcode".to_string())?;
        match op {
            0x80 | 0x95 | b'.' | b'(' => self.control(op),
            b'N' | 0x88 | 0x89 | b'J' | b'K' | b'M' | b'I' | 0x8a | b'G' => self.scalar(op),
            b'U' | b'C' | b'T' | b'B' | 0x8e | 0x8c | b'X' | 0x8d => self.string(op),
            b')' | 0x85..=0x87 | b't' | b']' | b'l' | b'a' | b'e' | b'}' | b'd' | b's' | b'u' => {
                self.container(op)
            }
            b'q' | b'r' | b'p' | 0x94 | b'h' | b'j' | b'g' => self.memo_op(op),
            b'c' | 0x93 | b'R' | 0x81 | b'b' | b'P' | b'Q' => self.object_op(op),
            _ => Err(unsupported(op)),
        }
    }

    /// PROTO, FRAME, STOP and MARK.
    fn control(&mut self, op: u8) -> Step<'a> {
        match op {
            // PROTO: the protocol number; what each opcode means does not depend on it.
            0x80 => match self.u8()? {
                p if p <= 5 => Ok(None),
                p => Err(format!("unsupported pickle protocol {p}")),
            },
            // FRAME: the length of the frame that follows inline; nothing to do.
            0x95 => self.take(8).map(|_| None),
            b'.' => match self.stack.len() > self.floor() {
                true => Ok(Some(self.pop()?)),
                false => Err("STOP with an empty stack".into()),
            },
            b'(' => {
                self.marks.push(self.stack.len());
                Ok(None)
            }
            _ => Err(unsupported(op)),
        }
    }

    /// None, bools, integers and floats.
    fn scalar(&mut self, op: u8) -> Step<'a> {
        match op {
            b'N' => self.push(Value::None),
            0x88 => self.push(Value::Bool(true)),
            0x89 => self.push(Value::Bool(false)),
            // BININT, BININT1, BININT2, INT (with protocol 0's spelling of bools), LONG1.
            b'J' => {
                let v = i32::from_le_bytes(self.array()?);
                self.push(Value::Int(v as i64))
            }
            b'K' => {
                let v = self.u8()?;
                self.push(Value::Int(v as i64))
            }
            b'M' => {
                let v = u16::from_le_bytes(self.array()?);
                self.push(Value::Int(v as i64))
            }
            b'I' => {
                let line = self.line()?;
                let v = match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(line.parse().map_err(|_| format!("bad integer {line:?}"))?),
                };
                self.push(v)
            }
            0x8a => {
                let n = self.u8()?;
                let b = self.take(n as u64)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes is too large"));
                }
                // Little-endian two's complement, sign-extended.
                let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                    0xff
                } else {
                    0
                };
                let mut le = [fill; 8];
                le[..b.len()].copy_from_slice(b);
                self.push(Value::Int(i64::from_le_bytes(le)))
            }
            b'G' => {
                let v = f64::from_be_bytes(self.array()?);
                self.push(Value::Float(v))
            }
            _ => Err(unsupported(op)),
        }
    }

    /// Byte strings (Python 2 str: SHORT_BINSTRING, BINSTRING; bytes: protocol 3+) and text.
    fn string(&mut self, op: u8) -> Step<'a> {
        let v = match op {
            b'U' | b'C' => {
                let n = self.u8()?;
                Value::Bytes(Bytes::Borrowed(self.take(n as u64)?))
            }
            b'T' => {
                let n = i32::from_le_bytes(self.array()?);
                if n < 0 {
                    return Err("negative string length".into());
                }
                Value::Bytes(Bytes::Borrowed(self.take(n as u64)?))
            }
            b'B' => {
                let n = self.u32()?;
                Value::Bytes(Bytes::Borrowed(self.take(n as u64)?))
            }
            0x8e => {
                let n = self.u64()?;
                Value::Bytes(Bytes::Borrowed(self.take(n)?))
            }
            0x8c => {
                let n = self.u8()?;
                self.utf8(n as u64)?
            }
            b'X' => {
                let n = self.u32()?;
                self.utf8(n as u64)?
            }
            0x8d => {
                let n = self.u64()?;
                self.utf8(n)?
            }
            _ => return Err(unsupported(op)),
        };
        self.push(v)
    }

    /// Tuples, lists and dicts: built whole or filled in.
    fn container(&mut self, op: u8) -> Step<'a> {
        match op {
            b')' => self.new_tuple(Vec::new()),
            0x85..=0x87 => {
                let items = self.pop_n((op - 0x84) as usize)?;
                self.new_tuple(items)
            }
            b't' => {
                let items = self.pop_mark()?;
                self.new_tuple(items)
            }
            b']' => self.new_list(Vec::new()),
            b'l' => {
                let items = self.pop_mark()?;
                self.new_list(items)
            }
            b'a' => {
                let v = self.pop()?;
                self.top_list()?.push(v);
                Ok(None)
            }
            b'e' => {
                let items = self.pop_mark()?;
                self.top_list()?.extend(items);
                Ok(None)
            }
            b'}' => self.new_dict(Vec::new()),
            b'd' => {
                let items = Self::pairs(self.pop_mark()?)?;
                self.new_dict(items)
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.top_dict()?.push((k, v));
                Ok(None)
            }
            b'u' => {
                let items = Self::pairs(self.pop_mark()?)?;
                self.top_dict()?.extend(items);
                Ok(None)
            }
            _ => Err(unsupported(op)),
        }
    }

    /// The memo: PUT and GET by a key of one, four or a line of bytes, and MEMOIZE.
    fn memo_op(&mut self, op: u8) -> Step<'a> {
        let key = match op {
            0x94 => return self.put(self.memo.len() as u64),
            b'q' | b'h' => self.u8()? as u64,
            b'r' | b'j' => self.u32()? as u64,
            b'p' | b'g' => self.text_int()? as u64,
            _ => return Err(unsupported(op)),
        };
        match op {
            b'q' | b'r' | b'p' => self.put(key),
            _ => self.get(key),
        }
    }

    /// Globals, calls, BUILD and persistent references.
    fn object_op(&mut self, op: u8) -> Step<'a> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.push(global(module, name)?)
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.push(global(m, n)?),
                    _ => Err("STACK_GLOBAL of non-strings".into()),
                }
            }
            // REDUCE calls callable(*args); NEWOBJ calls cls.__new__(cls, *args): for the
            // classes admitted the two build the same.
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let Value::Tuple(args) = args else {
                    let what = self.heap.describe(&args);
                    return Err(format!("call with {what} as arguments"));
                };
                // A few small values (cloning borrowed bytes copies no data).
                let args = self.heap.tuples[args].clone();
                let v = self.heap.call(&callable, &args)?;
                self.push(v)
            }
            b'b' => {
                let state = self.pop()?;
                match self.top()? {
                    &Value::Object(o) => {
                        self.heap.objects[o].state = Some(state);
                        Ok(None)
                    }
                    // An OrderedDict's attributes: a state dict's `_metadata`, not needed.
                    Value::Dict(_) => Ok(None),
                    v => Err(format!("BUILD of {}", self.heap.describe(v))),
                }
            }
            // PERSID, BINPERSID: a reference to an object kept outside the pickle.
            b'P' => {
                let pid = Value::Str(self.line()?);
                let v = self.heap.object(Kind::Persistent(pid));
                self.push(v)
            }
            b'Q' => {
                let pid = self.pop()?;
                let v = self.heap.object(Kind::Persistent(pid));
                self.push(v)
            }
            _ => Err(unsupported(op)),
        }
    }
}

fn unsupported(op: u8) -> String {
    format!("unsupported opcode 0x{op:02x}")
}

const RECONSTRUCT: [&str; 2] = ["numpy.core.multiarray", "numpy._core.multiarray"];

/// The only globals a CIFAR-10 batch needs; any other is refused (pickles can name any
/// function, and nothing is ever called anyway).
fn global<'a>(module: &'a str, name: &'a str) -> Result<Value<'a>, String> {
    let known = match (module, name) {
        (m, "_reconstruct") => RECONSTRUCT.contains(&m),
        ("numpy", "ndarray" | "dtype") => true,
        ("_codecs", "encode") => true,
        ("__builtin__" | "builtins", "bytes") => true,
        ("collections", "OrderedDict") => true,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_parameter") => true,
        ("torch" | "torch.storage", n) => n.ends_with("Storage"),
        _ => false,
    };
    if !known {
        return Err(format!(
            "unsupported global {module}.{name} (only numpy arrays, torch tensors, lists, dicts, strings and numbers are read)"
        ));
    }
    Ok(Value::Global(module, name))
}

impl<'a> Heap<'a> {
    fn object(&mut self, kind: Kind<'a>) -> Value<'a> {
        self.objects.push(Object { kind, state: None });
        Value::Object(self.objects.len() - 1)
    }

    /// What calling `callable(*args)` builds, for the callables [`global`] admits.
    fn call(&mut self, callable: &Value<'a>, args: &[Value<'a>]) -> Result<Value<'a>, String> {
        let Value::Global(module, name) = *callable else {
            return Err(format!("call of {}", self.describe(callable)));
        };
        match (module, name) {
            // OrderedDict(): a dict that SETITEMS fills.
            ("collections", "OrderedDict") => match args {
                [] => {
                    self.dicts.push(Vec::new());
                    Ok(Value::Dict(self.dicts.len() - 1))
                }
                _ => Err("OrderedDict() with arguments".into()),
            },
            ("torch._utils", "_rebuild_tensor_v2") => match args.len() {
                4.. => Ok(self.object(Kind::Tensor(args.to_vec()))),
                n => Err(format!("_rebuild_tensor_v2 with {n} arguments")),
            },
            // _rebuild_parameter(data, requires_grad, backward_hooks): the tensor itself.
            ("torch._utils", "_rebuild_parameter") => match args.first() {
                Some(t @ Value::Object(o)) if matches!(self.objects[*o].kind, Kind::Tensor(_)) => {
                    Ok(t.clone())
                }
                _ => Err("_rebuild_parameter of something other than a tensor".into()),
            },
            // _reconstruct(ndarray, (0,), b'b'): an empty array that BUILD fills.
            (m, "_reconstruct") if RECONSTRUCT.contains(&m) => match args.first() {
                Some(Value::Global("numpy", "ndarray")) => Ok(self.object(Kind::NdArray)),
                _ => Err("_reconstruct of something other than numpy.ndarray".into()),
            },
            // dtype('u1', False, True), then BUILD with (3, '|', ...).
            ("numpy", "dtype") => match args.first().and_then(Value::as_text) {
                Some(descr) => Ok(self.object(Kind::Dtype(descr))),
                None => Err("numpy.dtype without a type string".into()),
            },
            // How Python 3 writes bytes in protocol 2: _codecs.encode(str, 'latin1').
            ("_codecs", "encode") => match args {
                [Value::Str(s), Value::Str(enc)]
                    if matches!(
                        enc.to_ascii_lowercase().as_str(),
                        "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1"
                    ) =>
                {
                    latin1(s)
                }
                _ => Err("_codecs.encode other than of a string to latin1".into()),
            },
            // ... and empty bytes: bytes().
            ("__builtin__" | "builtins", "bytes") => match args {
                [] => Ok(Value::Bytes(Bytes::Borrowed(&[]))),
                [Value::Bytes(b)] => Ok(Value::Bytes(b.clone())),
                _ => Err("bytes() of something other than bytes".into()),
            },
            _ => Err(format!("{module}.{name} cannot be called")),
        }
    }
}

/// The latin-1 encoding of `s`: its UTF-8 bytes as they are when it is ASCII, else each
/// char (all of them below U+0100) as one byte.
fn latin1(s: &str) -> Result<Value<'_>, String> {
    if s.is_ascii() {
        return Ok(Value::Bytes(Bytes::Borrowed(s.as_bytes())));
    }
    let bytes = s
        .chars()
        .map(|c| u8::try_from(c).map_err(|_| format!("{c:?} has no latin-1 byte")))
        .collect::<Result<Vec<u8>, String>>()?;
    Ok(Value::Bytes(Bytes::Owned(Rc::new(bytes))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::{bytes, config, corrupted};
    use proptest::prelude::*;

    /// A pickle is read, or refused with an error saying where; whatever it built is walked as
    /// the readers walk it (a bounded walk: the memo may share a container within itself).
    fn read_and_walk(b: &[u8]) {
        let Ok(p) = parse(b) else { return };
        let mut todo = vec![p.root.clone()];
        let mut seen = 0;
        while let Some(v) = todo.pop() {
            seen += 1;
            if seen > 2000 {
                break;
            }
            p.describe(&v);
            v.as_int();
            v.as_text();
            if p.is_tensor(&v) {
                drop(p.tensor(&v));
            }
            drop(p.ndarray(&v));
            let _ = p.get(&v, "state_dict");
            todo.extend(p.list(&v).into_iter().flatten().cloned());
            todo.extend(p.tuple(&v).into_iter().flatten().cloned());
            for (k, v) in p.dict(&v).into_iter().flatten() {
                todo.push(k.clone());
                todo.push(v.clone());
            }
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn any_bytes(b in bytes(256)) {
            read_and_walk(&b);
        }

        #[test]
        fn opcode_soup(b in proptest::collection::vec(
            prop_oneof![
                proptest::sample::select(b"()tdlse.]}aubhqrjKJMIFTXUVBCNG\x80\x85\x86\x87\x88\x89\x8c\x94\x95Rc\n".to_vec()),
                any::<u8>(),
            ],
            0..64,
        )) {
            read_and_walk(&b);
        }

        #[test]
        fn corrupted_torch_pickles(b in corrupted(crate::fuzz::tiny_pickle())) {
            read_and_walk(&b);
        }
    }
}
