//! PyTorch `torch.save` checkpoints read without executing anything.
//!
//! A `.pth` file is a Python pickle: loading it with `pickle`/`torch.load` (without
//! `weights_only=True`) runs whatever callables it names, so a downloaded checkpoint can run code.
//! This reader interprets only the opcodes `torch.save` emits for a state dict, and only lets the
//! pickle name an allow-list of globals, none of which is ever called — each is recognised and
//! rebuilt here in Rust:
//!
//! - `collections.OrderedDict` (the state dict, its `_metadata`, empty backward hooks),
//! - `torch._utils._rebuild_tensor_v2` (and v1 `_rebuild_tensor`), `_rebuild_parameter` (and
//!   `_rebuild_parameter_with_state`) (tensors),
//! - `torch.<Dtype>Storage` (the storage type inside a persistent id).
//!
//! Any other global, or any other opcode, is refused with
//! `refusing to load <file>: it references <module.name>, which could run code; only plain tensor
//! checkpoints are accepted` (or the same about the opcode).
//!
//! Two container formats are understood:
//!
//! - the zip format of PyTorch ≥ 1.6: `<archive>/data.pkl` plus one `<archive>/data/<key>` entry
//!   per storage (stored or deflated entries), `<archive>/byteorder` must say `little` if present;
//! - the legacy stream (PyTorch < 1.6, e.g. checkpoints converted from Lua Torch in 2017–2019):
//!   pickled magic number, protocol 1001 and system info, the pickled object, the pickled list of
//!   storage keys, then each storage as an 8-byte element count followed by its bytes.
//!
//! Tensors keep their stored dtype (f32, f64, f16, bf16, i64, i32, i16, u8; bool becomes u8) and
//! are gathered into contiguous buffers honouring each tensor's storage offset and strides, so
//! views, transposes and shared storages come out as PyTorch shows them. Nested dicts (e.g.
//! `{"model": state_dict, "epoch": 3}`) are flattened with `.`-joined keys; entries that are not
//! tensors (numbers, strings, `None`) are skipped.
//!
//! TorchScript archives (`torch.jit.save`) are read by [`read_torchscript_tensors`]: the same zip
//! layout, but `data.pkl` holds the scripted module as an object tree. There the pickle may also
//! name the module classes (`__torch__.<anything>`, rebuilt as plain attribute records by `NEWOBJ`
//! and `BUILD` with a dict state, never instantiated) and `torch.jit._pickle.build_intlist` /
//! `build_doublelist` / `build_boollist` (lists of constants). The archive's `code/` (the
//! TorchScript program) and `constants.pkl` are never read.
//!
//! Pickled module objects (`torch.save({"attention": module, ...})`, as the official LSAST and
//! ArtBank code saves its prompt generators) are read by [`read_module_checkpoint`]: the caller
//! names exactly the classes the file may hold (`ldm.modules.attention.CrossAttention`,
//! `torch.nn.modules.linear.Linear`, …), each rebuilt as an attribute record and never
//! instantiated, plus `set` (an empty `nn.Module` field); a module's tensors are named as in its
//! state dict (`attention.attn1.to_q.weight`).
//!
//! Paper of the networks this was written for: Huang & Belongie, "Arbitrary Style Transfer in
//! Real-time with Adaptive Instance Normalization", 2017, <https://arxiv.org/abs/1703.06868>
//! (checkpoints `vgg_normalised.pth` and `decoder.pth` of naoto0804/pytorch-AdaIN).

use crate::safetensors_writer::{safetensors_bytes, TensorBytes};
use candle_core::{bail, DType, Device, Result, Tensor};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::io::{Cursor, Read};
use std::rc::Rc;

/// Largest `data.pkl` accepted (a state dict's pickle holds only names and shapes).
const MAX_PICKLE_BYTES: u64 = 256 << 20;
/// Largest element count of a view with more elements than its storage (zero strides).
const MAX_EXPANDED_ELEMENTS: usize = 1 << 26;
/// Deepest nesting of dicts flattened into tensor names.
const MAX_DICT_DEPTH: usize = 16;
/// Most dict entries and attributes a walk visits: containers shared through the memo are
/// walked once per reference, so a small file can describe an exponentially large tree.
const MAX_VISITS: usize = 1 << 20;
/// The first pickle of a legacy (non-zip) checkpoint: `torch.serialization.MAGIC_NUMBER`
/// (0x1950a86a20f9469cfc6c, 80 bits) as protocol 2 writes it: PROTO 2, LONG1 of 10 bytes, STOP.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];
/// Second pickle of a legacy checkpoint: `torch.serialization.PROTOCOL_VERSION`.
const LEGACY_PROTOCOL: i64 = 1001;

/// Whether `bytes` start as a `torch.save` file: a zip archive, or the legacy stream's magic
/// number.
pub fn is_torch_save(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&LEGACY_MAGIC)
}

/// Reads every tensor of a PyTorch checkpoint (`torch.save` of a state dict, zip or legacy
/// format) without executing any of it. `source_name` names the file in error messages.
///
/// Returns the tensors in the checkpoint's order, on the CPU, in their stored dtype.
pub fn read_torch_checkpoint(bytes: &[u8], source_name: &str) -> Result<Vec<(String, Tensor)>> {
    read_raw(bytes, source_name)?
        .into_iter()
        .map(|t| {
            let tensor = Tensor::from_raw_buffer(&t.data, t.dtype, &t.shape, &Device::Cpu)?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// Converts a PyTorch checkpoint (see [`read_torch_checkpoint`]) into a safetensors file with the
/// same tensor names, dtypes and shapes. Fails on duplicate names after flattening.
pub fn torch_to_safetensors(bytes: &[u8], source_name: &str) -> Result<Vec<u8>> {
    let tensors = read_raw(bytes, source_name)?;
    let views: Vec<TensorBytes<'_>> = tensors
        .iter()
        .map(|t| TensorBytes {
            name: &t.name,
            dtype: t.safetensors_dtype(),
            shape: &t.shape,
            data: std::borrow::Cow::Borrowed(&t.data),
        })
        .collect();
    safetensors_bytes(&views, &BTreeMap::new())
        .map_err(|e| candle_core::Error::Msg(format!("{source_name}: safetensors: {e}")))
}

/// A tensor read from a checkpoint: contiguous little-endian bytes.
struct RawTensor {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    /// The safetensors element type of the tensor.
    fn safetensors_dtype(&self) -> safetensors::Dtype {
        use safetensors::Dtype as D;
        match self.dtype {
            DType::F64 => D::F64,
            DType::F16 => D::F16,
            DType::BF16 => D::BF16,
            DType::I64 => D::I64,
            DType::I32 => D::I32,
            DType::I16 => D::I16,
            DType::U8 => D::U8,
            // `storage_type` produces no other dtype.
            _ => D::F32,
        }
    }
}

fn read_raw(bytes: &[u8], source_name: &str) -> Result<Vec<RawTensor>> {
    let (root, storages) = read_container(bytes, source_name, Classes::None)?;
    let mut walk = Walk::new(source_name);
    walk.state_dict(&root, "", 0)?;
    let refs = walk.found;
    if refs.is_empty() {
        bail!("{source_name}: the checkpoint holds no tensors")
    }
    let mut out = Vec::with_capacity(refs.len());
    for (name, t) in refs {
        let data = storages.get(&*t.storage.key).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{source_name}: tensor {name} uses storage {} that the file does not contain",
                t.storage.key
            ))
        })?;
        out.push(materialize(name, &t, data, source_name)?);
    }
    Ok(out)
}

/// Reads every tensor attribute of a TorchScript archive (`torch.jit.save` of a scripted or traced
/// module) without executing any of it: the module object tree in `data.pkl` is walked and each
/// tensor is named by its attribute path from the root module, e.g.
/// `net.layers.mixed.tower.conv.weight`. `source_name` names the file in error messages.
///
/// Module classes are recognised by name only (`__torch__.…`); a class whose state is not a
/// plain attribute dict (a custom `__setstate__`) is refused with an error naming it.
pub fn read_torchscript_tensors(bytes: &[u8], source_name: &str) -> Result<Vec<(String, Tensor)>> {
    if !bytes.starts_with(b"PK\x03\x04") {
        bail!("{source_name}: not a TorchScript archive (not a zip file)")
    }
    let (root, storages) = read_zip(bytes, source_name, Classes::TorchScript)?;
    let mut walk = Walk::new(source_name);
    walk.script_module(&root, "", 0)?;
    if walk.found.is_empty() {
        bail!("{source_name}: the TorchScript archive holds no tensors")
    }
    tensors_of(walk.found, &storages, source_name)
}

/// Reads every tensor of a `torch.save` of Python objects whose classes are all in `classes`
/// (`module.Name`, e.g. `torch.nn.modules.linear.Linear`) without executing any of it. Objects
/// are rebuilt as attribute records, never instantiated; a pickle naming any other class or
/// callable is refused with an error naming it.
///
/// Tensors are named by their path from the root: dict keys, and for a module its state-dict
/// names (`_parameters`, `_buffers` and `_modules` entries), e.g.
/// `attention.ff.net.0.proj.weight`; tensor attributes of plain objects by attribute name.
pub fn read_module_checkpoint(
    bytes: &[u8],
    source_name: &str,
    classes: &[&str],
) -> Result<Vec<(String, Tensor)>> {
    let (root, storages) = read_container(bytes, source_name, Classes::Listed(classes))?;
    let mut walk = Walk::new(source_name);
    walk.objects(&root, "", 0)?;
    if walk.found.is_empty() {
        bail!("{source_name}: the checkpoint holds no tensors")
    }
    tensors_of(walk.found, &storages, source_name)
}

/// The root object and the storages of a `torch.save` file, zip or legacy.
fn read_container(bytes: &[u8], source: &str, classes: Classes<'_>) -> Result<(Value, Storages)> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes, source, classes)
    } else if bytes.starts_with(&LEGACY_MAGIC) {
        read_legacy(bytes, source, classes)
    } else {
        bail!(
            "{source}: not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy \
             torch.save stream)"
        )
    }
}

/// The named tensor references as tensors, gathered from their storages.
fn tensors_of(
    refs: Vec<(String, Rc<TensorRef>)>,
    storages: &Storages,
    source_name: &str,
) -> Result<Vec<(String, Tensor)>> {
    refs.into_iter()
        .map(|(name, t)| {
            let data = storages.get(&*t.storage.key).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{source_name}: tensor {name} uses storage {} that the file does not contain",
                    t.storage.key
                ))
            })?;
            let t = materialize(name, &t, data, source_name)?;
            let tensor = Tensor::from_raw_buffer(&t.data, t.dtype, &t.shape, &Device::Cpu)?;
            Ok((t.name, tensor))
        })
        .collect()
}

/// `prefix.key`, or `key` at the root.
fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A walk of the unpickled objects that names their tensors, within the visit budget.
struct Walk<'a> {
    source: &'a str,
    /// The tensors found, by name, in the order met.
    found: Vec<(String, Rc<TensorRef>)>,
    visits: usize,
}

impl<'a> Walk<'a> {
    fn new(source: &'a str) -> Self {
        Self {
            source,
            found: Vec::new(),
            visits: 0,
        }
    }

    /// Counts one entry at nesting `depth`; fails past [`MAX_DICT_DEPTH`] or [`MAX_VISITS`].
    fn visit(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_DICT_DEPTH {
            bail!(
                "{}: dicts or objects nested deeper than {MAX_DICT_DEPTH} levels",
                self.source
            )
        }
        self.visits += 1;
        if self.visits > MAX_VISITS {
            bail!(
                "{}: the checkpoint's dicts and objects have more than {MAX_VISITS} entries in \
                 all (containers shared many times over)",
                self.source
            )
        }
        Ok(())
    }

    /// A dict key as a name part (strings and integers).
    fn key(&self, k: &Value) -> Result<String> {
        match k {
            Value::Str(s) => Ok(s.to_string()),
            Value::Int(i) => Ok(i.to_string()),
            other => bail!(
                "{}: a dict key is a {}, not a string",
                self.source,
                other.kind()
            ),
        }
    }

    /// A state dict: nested dicts of tensors, names joined with `.`.
    fn state_dict(&mut self, v: &Value, prefix: &str, depth: usize) -> Result<()> {
        let Value::Dict(d) = v else {
            bail!(
                "{}: the checkpoint holds a {}, not a dict of tensors (a state dict)",
                self.source,
                v.kind()
            )
        };
        for (k, v) in d.borrow().iter() {
            self.visit(depth)?;
            let name = join(prefix, &self.key(k)?);
            match v {
                Value::Tensor(t) => self.found.push((name, t.clone())),
                Value::Dict(_) => self.state_dict(v, &name, depth + 1)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A TorchScript module tree: tensors by attribute path.
    fn script_module(&mut self, v: &Value, prefix: &str, depth: usize) -> Result<()> {
        let Value::Object(obj) = v else {
            bail!(
                "{}: the TorchScript archive's root is a {}, not a module",
                self.source,
                v.kind()
            )
        };
        for (k, v) in obj.attrs.borrow().iter() {
            self.visit(depth)?;
            let Value::Str(key) = k else {
                bail!(
                    "{}: an attribute name of {} is a {}, not a string",
                    self.source,
                    obj.class,
                    k.kind()
                )
            };
            let name = join(prefix, key);
            match v {
                Value::Tensor(t) => self.found.push((name, t.clone())),
                Value::Object(_) => self.script_module(v, &name, depth + 1)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Pickled dicts and objects (see [`read_module_checkpoint`]): tensors by state-dict name.
    fn objects(&mut self, v: &Value, prefix: &str, depth: usize) -> Result<()> {
        let entries = match v {
            Value::Tensor(t) => {
                self.found.push((prefix.to_string(), t.clone()));
                return Ok(());
            }
            Value::Dict(d) => d.borrow().clone(),
            Value::Object(obj) => obj.attrs.borrow().clone(),
            _ => return Ok(()),
        };
        let in_module = matches!(v, Value::Object(_));
        for (k, v) in &entries {
            self.visit(depth)?;
            let key = self.key(k)?;
            // A module's parameters, buffers and submodules are named without their field.
            let state_field =
                in_module && matches!(key.as_str(), "_parameters" | "_buffers" | "_modules");
            match v {
                Value::Dict(_) if state_field => self.objects(v, prefix, depth + 1)?,
                // Hooks and other bookkeeping dicts of a module hold no weights.
                Value::Dict(_) if in_module => {}
                Value::Tensor(_) | Value::Dict(_) | Value::Object(_) => {
                    self.objects(v, &join(prefix, &key), depth + 1)?
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Element type of a torch storage class (`torch.FloatStorage` → F32).
#[derive(Debug, Clone, Copy, PartialEq)]
enum StorageType {
    Supported(DType),
    /// A storage class that is harmless but has no candle dtype (e.g. `CharStorage`).
    Unsupported(&'static str),
}

fn storage_type(name: &str) -> Option<StorageType> {
    use StorageType::*;
    Some(match name {
        "FloatStorage" => Supported(DType::F32),
        "DoubleStorage" => Supported(DType::F64),
        "HalfStorage" => Supported(DType::F16),
        "BFloat16Storage" => Supported(DType::BF16),
        "LongStorage" => Supported(DType::I64),
        "IntStorage" => Supported(DType::I32),
        "ShortStorage" => Supported(DType::I16),
        "ByteStorage" | "BoolStorage" => Supported(DType::U8),
        "CharStorage" => Unsupported("CharStorage (int8)"),
        "ComplexFloatStorage" => Unsupported("ComplexFloatStorage"),
        "ComplexDoubleStorage" => Unsupported("ComplexDoubleStorage"),
        "QInt8Storage" | "QUInt8Storage" | "QInt32Storage" => Unsupported("quantized storage"),
        _ => return None,
    })
}

/// The allow-listed globals; none is ever called.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    Storage(StorageType),
    /// An object class: a TorchScript module class (`__torch__.…`), only in TorchScript
    /// archives, or one of the classes a caller of [`read_module_checkpoint`] listed.
    Class,
    /// `set` (`__builtin__.set` in protocol 2), only with listed classes: `nn.Module`'s
    /// `_non_persistent_buffers_set`.
    Set,
    /// `torch.jit._pickle.build_{int,double,bool}list`, only in TorchScript archives.
    BuildList,
}

/// Whether `s` is a dotted Python identifier path (`a.b_c.D`).
fn is_dotted_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Which object classes a pickle may name; they are never instantiated.
#[derive(Debug, Clone, Copy)]
enum Classes<'a> {
    /// None: a state dict.
    None,
    /// TorchScript module classes (`__torch__.…`) and its constant-list builders.
    TorchScript,
    /// Exactly these `module.Name` classes, and `set`.
    Listed(&'a [&'a str]),
}

fn allowed_global(module: &str, name: &str, classes: Classes<'_>) -> Option<Global> {
    if let Classes::Listed(listed) = classes {
        let listed = listed
            .iter()
            .any(|c| c.rsplit_once('.') == Some((module, name)));
        if listed {
            return Some(Global::Class);
        }
        if matches!((module, name), ("builtins" | "__builtin__", "set")) {
            return Some(Global::Set);
        }
    }
    if let Classes::TorchScript = classes {
        let torch_class = module == "__torch__" || module.starts_with("__torch__.");
        if torch_class && is_dotted_identifier(module) && is_dotted_identifier(name) {
            return Some(Global::Class);
        }
        if module == "torch.jit._pickle"
            && matches!(
                name,
                "build_intlist" | "build_doublelist" | "build_boollist"
            )
        {
            return Some(Global::BuildList);
        }
    }
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        // v1 (PyTorch ≤ 0.3) lacks the trailing requires_grad/hooks arguments v2 ignores anyway.
        ("torch._utils", "_rebuild_tensor" | "_rebuild_tensor_v2") => Some(Global::RebuildTensor),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Some(Global::RebuildParameter)
        }
        ("torch", storage) => storage_type(storage).map(Global::Storage),
        _ => None,
    }
}

/// A storage named by a persistent id: `('storage', torch.XStorage, key, location, numel, ...)`.
#[derive(Debug)]
struct StorageRef {
    ty: StorageType,
    key: Rc<str>,
    numel: usize,
}

/// A tensor as `_rebuild_tensor_v2` describes it.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Pickle values. Containers are shared (`Rc`) like Python objects, so memo lookups are O(1)
/// and cannot blow up memory by deep copies.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A float's value is never needed (state dicts hold floats only in metadata).
    Float,
    Str(Rc<str>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
    /// A TorchScript module class (`__torch__.module.Name`), by name only.
    Class(Rc<str>),
    /// A TorchScript module: its class name and attributes (set by `BUILD`).
    Object(Rc<ScriptObject>),
}

/// The address of a container value (what a reference cycle can run through), none for others.
fn container_id(v: &Value) -> Option<*const ()> {
    match v {
        Value::Tuple(t) => Some(Rc::as_ptr(t).cast()),
        Value::List(l) => Some(Rc::as_ptr(l).cast()),
        Value::Dict(d) => Some(Rc::as_ptr(d).cast()),
        Value::Object(o) => Some(Rc::as_ptr(o).cast()),
        _ => None,
    }
}

/// A TorchScript object rebuilt as a record; its class is never instantiated.
#[derive(Debug)]
struct ScriptObject {
    class: Rc<str>,
    attrs: RefCell<Vec<(Value, Value)>>,
    /// Whether `BUILD` has set the attributes (a second `BUILD` is refused).
    built: std::cell::Cell<bool>,
}

impl Value {
    /// Short description for error messages (never recursive, so cycles cannot hang it).
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float => "float",
            Value::Str(_) => "str",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
            Value::Object(_) => "object",
            Value::Class(_) => "class",
        }
    }
}

fn refuse_global(
    source: &str,
    module: &str,
    name: &str,
    classes: Classes<'_>,
) -> candle_core::Error {
    let accepted = match classes {
        Classes::Listed(listed) => format!(
            "only tensors and the classes {} are accepted",
            listed.join(", ")
        ),
        _ => "only plain tensor checkpoints are accepted".to_string(),
    };
    candle_core::Error::Msg(format!(
        "refusing to load {source}: it references {module}.{name}, which could run code; {accepted}"
    ))
}

/// Pickle opcode names, for refusals of opcodes outside the reader's set.
fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        b'P' => "PERSID",
        b'S' | b'V' => "text string",
        b'B' | b'C' | 0x8e => "BINBYTES",
        b'I' | b'L' | b'F' => "text number",
        0x8b => "LONG4",
        0x96 => "BYTEARRAY8",
        0x97 | 0x98 => "buffer",
        _ => "unknown",
    }
}

/// The pickle virtual machine, restricted to what `torch.save` emits.
struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    /// Start indices (into `stack`) of open MARKs.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    source: &'a str,
    /// Storages named by persistent ids, in order of first appearance.
    storages: Vec<Rc<StorageRef>>,
    /// The object classes allowed; with any, `NEWOBJ` and object `BUILD` are too.
    classes: Classes<'a>,
}

impl<'a> Unpickler<'a> {
    fn new(data: &'a [u8], source: &'a str) -> Self {
        Self {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            source,
            storages: Vec::new(),
            classes: Classes::None,
        }
    }

    fn with_classes(data: &'a [u8], source: &'a str, classes: Classes<'a>) -> Self {
        Self {
            classes,
            ..Self::new(data, source)
        }
    }

    fn corrupt(&self, what: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!(
            "{}: corrupt pickle at byte {}: {what}",
            self.source, self.pos
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.corrupt("unexpected end of data")),
        }
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.corrupt("unterminated GLOBAL name"));
        };
        let s = std::str::from_utf8(&rest[..n]).map_err(|_| self.corrupt("non-UTF-8 name"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b).map_err(|_| self.corrupt("invalid UTF-8 string"))?;
        Ok(Value::Str(s.into()))
    }

    fn pop(&mut self) -> Result<Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("pop across a MARK"));
        }
        self.stack.pop().ok_or_else(|| self.corrupt("empty stack"))
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.corrupt("no MARK to pop to"));
        };
        Ok(self.stack.split_off(m))
    }

    /// Refuses to put `items` into the container on top of the stack when one of them already
    /// holds that container: pickles can build self-referencing objects through the memo, and
    /// such a cycle of `Rc`s would never be freed (no state dict contains one).
    fn refuse_cycle(&self, items: &[Value]) -> Result<()> {
        let Some(target) = container_id(self.top()?) else {
            return Ok(());
        };
        let mut seen = std::collections::HashSet::new();
        let mut todo: Vec<Value> = items.to_vec();
        while let Some(v) = todo.pop() {
            let Some(id) = container_id(&v) else { continue };
            if id == target {
                return Err(self.corrupt("an object that contains itself"));
            }
            if !seen.insert(id) {
                continue;
            }
            match &v {
                Value::Tuple(t) => todo.extend(t.iter().cloned()),
                Value::List(l) => todo.extend(l.borrow().iter().cloned()),
                Value::Dict(d) => {
                    todo.extend(d.borrow().iter().flat_map(|(k, v)| [k.clone(), v.clone()]))
                }
                Value::Object(o) => todo.extend(
                    o.attrs
                        .borrow()
                        .iter()
                        .flat_map(|(k, v)| [k.clone(), v.clone()]),
                ),
                _ => {}
            }
        }
        Ok(())
    }

    fn top(&self) -> Result<&Value> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err(self.corrupt("no object above the MARK"));
        }
        self.stack.last().ok_or_else(|| self.corrupt("empty stack"))
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        match allowed_global(module, name, self.classes) {
            Some(Global::Class) => {
                self.stack
                    .push(Value::Class(format!("{module}.{name}").into()));
                Ok(())
            }
            Some(g) => {
                self.stack.push(Value::Global(g));
                Ok(())
            }
            None => Err(refuse_global(self.source, module, name, self.classes)),
        }
    }

    fn int(&self, v: &Value, what: &str) -> Result<i64> {
        match v {
            Value::Int(i) => Ok(*i),
            Value::Bool(b) => Ok(*b as i64),
            other => Err(self.corrupt(&format!("{what} is a {}, not an int", other.kind()))),
        }
    }

    fn usize(&self, v: &Value, what: &str) -> Result<usize> {
        let i = self.int(v, what)?;
        usize::try_from(i).map_err(|_| self.corrupt(&format!("{what} is negative ({i})")))
    }

    fn usizes(&self, v: &Value, what: &str) -> Result<Vec<usize>> {
        match v {
            Value::Tuple(items) => items.iter().map(|i| self.usize(i, what)).collect(),
            other => Err(self.corrupt(&format!("{what} is a {}, not a tuple", other.kind()))),
        }
    }

    /// `BINPERSID`: `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value> {
        let Value::Tuple(items) = &pid else {
            return Err(self.corrupt("persistent id is not a tuple"));
        };
        let ok_tag = matches!(items.first(), Some(Value::Str(s)) if &**s == "storage");
        if !ok_tag || items.len() < 5 {
            return Err(self.corrupt("persistent id is not a ('storage', ...) tuple"));
        }
        let Value::Global(Global::Storage(ty)) = items[1] else {
            return Err(self.corrupt("persistent id does not name a torch storage type"));
        };
        let Value::Str(key) = &items[2] else {
            return Err(self.corrupt("storage key is not a string"));
        };
        let numel = self.usize(&items[4], "storage size")?;
        // One record per key: tensors sharing a storage get the same Rc.
        if let Some(s) = self.storages.iter().find(|s| s.key == *key) {
            if s.ty != ty || s.numel != numel {
                return Err(self.corrupt(&format!("storage {key} is described twice differently")));
            }
            return Ok(Value::Storage(s.clone()));
        }
        let s = Rc::new(StorageRef {
            ty,
            key: key.clone(),
            numel,
        });
        self.storages.push(s.clone());
        Ok(Value::Storage(s))
    }

    /// `REDUCE` of an allow-listed callable, rebuilt here.
    fn reduce(&mut self, callable: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.corrupt("REDUCE arguments are not a tuple"));
        };
        match callable {
            Value::Global(Global::OrderedDict) if args.is_empty() => {
                Ok(Value::Dict(Rc::new(RefCell::new(Vec::new()))))
            }
            Value::Global(Global::RebuildTensor) => {
                // (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
                if args.len() < 4 {
                    return Err(self.corrupt("_rebuild_tensor_v2 with fewer than 4 arguments"));
                }
                let Value::Storage(storage) = &args[0] else {
                    return Err(self.corrupt("_rebuild_tensor_v2 without a storage"));
                };
                let offset = self.usize(&args[1], "storage offset")?;
                let shape = self.usizes(&args[2], "size")?;
                let strides = self.usizes(&args[3], "stride")?;
                if shape.len() != strides.len() {
                    return Err(self.corrupt("size and stride have different lengths"));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset,
                    shape,
                    strides,
                })))
            }
            Value::Global(Global::BuildList) => match args.first() {
                Some(l @ Value::List(_)) if args.len() == 1 => Ok(l.clone()),
                _ => Err(self.corrupt("build_intlist without one list argument")),
            },
            // The set's items are never needed (module bookkeeping).
            Value::Global(Global::Set) if args.len() <= 1 => {
                Ok(Value::List(Rc::new(RefCell::new(Vec::new()))))
            }
            Value::Global(Global::RebuildParameter) => match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(self.corrupt("_rebuild_parameter without a tensor")),
            },
            other => Err(self.corrupt(&format!(
                "REDUCE of a {} that is not a supported call",
                other.kind()
            ))),
        }
    }

    /// Runs to `STOP` and returns the pickled object.
    fn load(&mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.corrupt(&format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint only
                }
                b'.' => {
                    let v = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.corrupt("objects left on the stack at STOP"));
                    }
                    return Ok(v);
                }
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()))
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()))
                }
                0x8a => {
                    // LONG1: n-byte two's complement little endian.
                    let n = self.u8()? as usize;
                    let bytes = self.take(n)?;
                    let v = match n {
                        0 => 0,
                        1..=8 => {
                            let mut b = [0u8; 8];
                            b[..n].copy_from_slice(bytes);
                            let shift = 64 - 8 * n as u32;
                            (i64::from_le_bytes(b) << shift) >> shift
                        }
                        _ => return Err(self.corrupt("integer wider than 64 bits")),
                    };
                    self.stack.push(Value::Int(v))
                }
                b'G' => {
                    self.take(8)?; // BINFLOAT (big endian f64)
                    self.stack.push(Value::Float)
                }
                // BINUNICODE, and Python 2's BINSTRING.
                b'X' | b'T' => {
                    let n = u32::from_le_bytes(self.array()?) as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                // SHORT_BINUNICODE, and Python 2's SHORT_BINSTRING (old checkpoints' names).
                0x8c | b'U' => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.array()?);
                    let n = usize::try_from(n).map_err(|_| self.corrupt("string too long"))?;
                    let v = self.string(n)?;
                    self.stack.push(v)
                }
                b')' => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.stack.push(Value::Tuple(Rc::new(items)))
                }
                b']' => self
                    .stack
                    .push(Value::List(Rc::new(RefCell::new(Vec::new())))),
                b'}' => self
                    .stack
                    .push(Value::Dict(Rc::new(RefCell::new(Vec::new())))),
                b'a' => {
                    let v = self.pop()?;
                    self.refuse_cycle(std::slice::from_ref(&v))?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().push(v),
                        other => return Err(self.corrupt(&format!("APPEND to a {}", other.kind()))),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.refuse_cycle(&items)?;
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => {
                            return Err(self.corrupt(&format!("APPENDS to a {}", other.kind())))
                        }
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.refuse_cycle(&[k.clone(), v.clone()])?;
                    match self.top()? {
                        Value::Dict(d) => d.borrow_mut().push((k, v)),
                        other => {
                            return Err(self.corrupt(&format!("SETITEM on a {}", other.kind())))
                        }
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.corrupt("SETITEMS with an odd number of objects"));
                    }
                    self.refuse_cycle(&items)?;
                    match self.top()? {
                        Value::Dict(d) => {
                            let mut d = d.borrow_mut();
                            let mut it = items.into_iter();
                            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                                d.push((k, v));
                            }
                        }
                        other => {
                            return Err(self.corrupt(&format!("SETITEMS on a {}", other.kind())))
                        }
                    }
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (&module, &name) {
                        (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                        _ => return Err(self.corrupt("STACK_GLOBAL without two strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(pid)?;
                    self.stack.push(v)
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v)
                }
                0x81 if !matches!(self.classes, Classes::None) => {
                    // NEWOBJ of an allowed class: an empty attribute record.
                    let args = self.pop()?;
                    let class = self.pop()?;
                    let Value::Class(class) = class else {
                        return Err(self.corrupt(&format!("NEWOBJ of a {}", class.kind())));
                    };
                    if !matches!(&args, Value::Tuple(a) if a.is_empty()) {
                        return Err(self.corrupt(&format!("NEWOBJ of {class} with arguments")));
                    }
                    self.stack.push(Value::Object(Rc::new(ScriptObject {
                        class,
                        attrs: RefCell::new(Vec::new()),
                        built: std::cell::Cell::new(false),
                    })))
                }
                b'b' => {
                    // BUILD: instance state. Only dicts (OrderedDict `_metadata`) get one from
                    // torch.save; the state carries no tensors and is dropped. A TorchScript
                    // module gets its attribute dict.
                    let state = self.pop()?;
                    self.refuse_cycle(std::slice::from_ref(&state))?;
                    match self.top()? {
                        Value::Dict(_) => {}
                        Value::Object(obj) => {
                            let Value::Dict(d) = &state else {
                                return Err(candle_core::Error::Msg(format!(
                                    "refusing to load {}: class {} restores a {} state through \
                                     a custom __setstate__; only modules whose state is a plain \
                                     attribute dict are accepted",
                                    self.source,
                                    obj.class,
                                    state.kind()
                                )));
                            };
                            if obj.built.replace(true) {
                                return Err(self.corrupt(&format!("{} built twice", obj.class)));
                            }
                            obj.attrs.borrow_mut().extend(d.borrow().iter().cloned());
                        }
                        _ => return Err(self.corrupt("BUILD on an object that is not a dict")),
                    }
                }
                b'q' => {
                    let id = self.u8()?.into();
                    self.memo_put(id)?
                }
                b'r' => {
                    let id = u32::from_le_bytes(self.array()?);
                    self.memo_put(id)?
                }
                0x94 => {
                    let id = u32::try_from(self.memo.len())
                        .map_err(|_| self.corrupt("memo too large"))?;
                    self.memo_put(id)?
                }
                b'h' => {
                    let id = self.u8()?.into();
                    self.memo_get(id)?
                }
                b'j' => {
                    let id = u32::from_le_bytes(self.array()?);
                    self.memo_get(id)?
                }
                other => {
                    return Err(candle_core::Error::Msg(format!(
                        "refusing to load {}: it uses pickle opcode {} (0x{other:02x}), which a \
                         plain tensor checkpoint does not need; only plain tensor checkpoints are \
                         accepted",
                        self.source,
                        opcode_name(other)
                    )))
                }
            }
        }
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        let v = self.memo.get(&id).cloned();
        match v {
            Some(v) => {
                self.stack.push(v);
                Ok(())
            }
            None => Err(self.corrupt(&format!("memo entry {id} is missing"))),
        }
    }
}

/// Storage bytes by key.
type Storages = HashMap<String, Vec<u8>>;

fn zip_err(source: &str, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{source}: not a readable PyTorch zip checkpoint ({e})"
    ))
}

/// Reads a zip entry fully, refusing more than `limit` bytes (protects against inflating bombs).
fn read_entry<R: Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    limit: u64,
    source: &str,
) -> Result<Vec<u8>> {
    let entry = zip.by_name(name).map_err(|e| zip_err(source, e))?;
    let mut out = Vec::new();
    entry
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| zip_err(source, format!("entry {name}: {e}")))?;
    if out.len() as u64 > limit {
        bail!("{source}: zip entry {name} is larger than the {limit} bytes it should hold")
    }
    Ok(out)
}

fn read_zip(bytes: &[u8], source: &str, classes: Classes<'_>) -> Result<(Value, Storages)> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| zip_err(source, e))?;
    let mut pkl_names = Vec::new();
    for name in zip.file_names() {
        let name = name.map_err(|e| zip_err(source, e))?;
        if name.ends_with("/data.pkl") && name.matches('/').count() == 1 {
            pkl_names.push(name.into_owned());
        }
    }
    let [pkl_name] = pkl_names.as_slice() else {
        bail!(
            "{source}: expected one <archive>/data.pkl in the zip, found {}",
            pkl_names.len()
        )
    };
    let prefix = pkl_name.trim_end_matches("data.pkl").to_owned();
    let byteorder = format!("{prefix}byteorder");
    if zip.index_for_name(&byteorder).is_some() {
        let order = read_entry(&mut zip, &byteorder, 16, source)?;
        if order.trim_ascii() != b"little" {
            bail!(
                "{source}: the storages are {} endian; only little-endian checkpoints are supported",
                String::from_utf8_lossy(&order)
            )
        }
    }
    let pkl = read_entry(&mut zip, pkl_name, MAX_PICKLE_BYTES, source)?;
    let mut up = Unpickler::with_classes(&pkl, source, classes);
    let root = up.load()?;
    let mut storages = Storages::new();
    for s in &up.storages {
        let StorageType::Supported(dtype) = s.ty else {
            continue; // reported when a tensor uses it
        };
        let len = storage_bytes(s, dtype, source)?;
        let name = format!("{prefix}data/{}", s.key);
        let data = read_entry(&mut zip, &name, len as u64, source)?;
        if data.len() != len {
            bail!(
                "{source}: storage {} holds {} bytes, expected {len} ({} × {dtype:?})",
                s.key,
                data.len(),
                s.numel
            )
        }
        storages.insert(s.key.to_string(), data);
    }
    Ok((root, storages))
}

fn storage_bytes(s: &StorageRef, dtype: DType, source: &str) -> Result<usize> {
    s.numel
        .checked_mul(dtype.size_in_bytes())
        .ok_or_else(|| candle_core::Error::Msg(format!("{source}: storage {} too large", s.key)))
}

fn read_legacy(bytes: &[u8], source: &str, classes: Classes<'_>) -> Result<(Value, Storages)> {
    let mut pos = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<(Value, Vec<Rc<StorageRef>>)> {
        let mut up = Unpickler::with_classes(&bytes[pos..], source, classes);
        let v = up
            .load()
            .map_err(|e| candle_core::Error::Msg(format!("{e} (legacy checkpoint, {what})")))?;
        pos += up.pos;
        Ok((v, up.storages))
    };
    let (protocol, _) = next("protocol version")?;
    if !matches!(protocol, Value::Int(LEGACY_PROTOCOL)) {
        bail!("{source}: unsupported legacy torch.save protocol (expected {LEGACY_PROTOCOL})")
    }
    let (sys_info, _) = next("system info")?;
    if let Value::Dict(d) = &sys_info {
        for (k, v) in d.borrow().iter() {
            if matches!(k, Value::Str(k) if &**k == "little_endian")
                && matches!(v, Value::Bool(false))
            {
                bail!("{source}: big-endian legacy checkpoints are not supported")
            }
        }
    }
    let (root, refs) = next("object")?;
    let (keys, _) = next("storage keys")?;
    let Value::List(keys) = keys else {
        bail!("{source}: corrupt legacy checkpoint: the storage keys are not a list")
    };
    let mut storages = Storages::new();
    for key in keys.borrow().iter() {
        let Value::Str(key) = key else {
            bail!("{source}: corrupt legacy checkpoint: a storage key is not a string")
        };
        let Some(s) = refs.iter().find(|s| s.key == *key) else {
            bail!("{source}: corrupt legacy checkpoint: storage {key} is used by no tensor")
        };
        let dtype = match s.ty {
            StorageType::Supported(d) => d,
            StorageType::Unsupported(name) => {
                bail!("{source}: storage {key} has dtype {name}, which easel does not support")
            }
        };
        let len = storage_bytes(s, dtype, source)?;
        let header = bytes.get(pos..pos + 8).ok_or_else(|| {
            candle_core::Error::Msg(format!("{source}: truncated at storage {key}"))
        })?;
        let mut n = [0u8; 8];
        n.copy_from_slice(header);
        if u64::from_le_bytes(n) != s.numel as u64 {
            bail!(
                "{source}: corrupt legacy checkpoint: storage {key} has {} elements on disk, {} \
                 in the pickle",
                u64::from_le_bytes(n),
                s.numel
            )
        }
        let data = pos
            .checked_add(8 + len)
            .and_then(|end| bytes.get(pos + 8..end))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("{source}: truncated at storage {key}"))
            })?;
        storages.insert(key.to_string(), data.to_vec());
        pos += 8 + len;
    }
    Ok((root, storages))
}

/// Copies a (possibly strided, offset) tensor out of its storage into a contiguous tensor.
fn materialize(name: String, t: &TensorRef, storage: &[u8], source: &str) -> Result<RawTensor> {
    let dtype = match t.storage.ty {
        StorageType::Supported(d) => d,
        StorageType::Unsupported(what) => {
            bail!("{source}: tensor {name} has dtype {what}, which easel does not support")
        }
    };
    let esize = dtype.size_in_bytes();
    let too_large = || candle_core::Error::Msg(format!("{source}: tensor {name} is too large"));
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(too_large)?;
    // Zero or overlapping strides (expanded views) can describe far more elements than the
    // storage holds; refuse large ones instead of letting a small file allocate without bound.
    if numel > t.storage.numel && numel > MAX_EXPANDED_ELEMENTS {
        bail!(
            "{source}: tensor {name} (shape {:?}, strides {:?}) expands a storage of {} elements \
             to {numel}; expanded views that large are refused",
            t.shape,
            t.strides,
            t.storage.numel
        )
    }
    let mut out = Vec::with_capacity(numel.checked_mul(esize).ok_or_else(too_large)?);
    if numel > 0 {
        let last = t
            .shape
            .iter()
            .zip(&t.strides)
            .try_fold(t.offset, |a, (&d, &s)| {
                a.checked_add((d - 1).checked_mul(s)?)
            })
            .ok_or_else(too_large)?;
        if last >= t.storage.numel {
            bail!(
                "{source}: tensor {name} (shape {:?}, strides {:?}, offset {}) reaches element \
                 {last} of a storage of {}",
                t.shape,
                t.strides,
                t.offset,
                t.storage.numel
            )
        }
        // Every element index below is at most `last` < `storage.numel`, and `storage` holds
        // exactly `numel × esize` bytes (checked when it was read), so the slices are in bounds.
        // Odometer over all but the last dim; the last dim is copied as a run when contiguous.
        let rank = t.shape.len();
        let (inner, inner_stride) = match rank {
            0 => (1, 1),
            _ => (t.shape[rank - 1], t.strides[rank - 1]),
        };
        let outer_rank = rank.saturating_sub(1);
        let mut idx = vec![0usize; outer_rank];
        'outer: loop {
            let base = t.offset
                + idx
                    .iter()
                    .zip(&t.strides)
                    .map(|(&i, &s)| i * s)
                    .sum::<usize>();
            if inner_stride == 1 {
                out.extend_from_slice(&storage[base * esize..(base + inner) * esize]);
            } else {
                for j in 0..inner {
                    let e = base + j * inner_stride;
                    out.extend_from_slice(&storage[e * esize..(e + 1) * esize]);
                }
            }
            // Advance the odometer; done when it wraps around.
            let mut d = outer_rank;
            loop {
                if d == 0 {
                    break 'outer;
                }
                d -= 1;
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
    }
    Ok(RawTensor {
        name,
        dtype,
        shape: t.shape.clone(),
        data: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unpickle(pkl: &[u8]) -> Result<Value> {
        Unpickler::new(pkl, "t.pkl").load()
    }

    #[test]
    fn long1_is_signed_little_endian() -> Result<()> {
        for (pkl, want) in [
            (&b"\x80\x02\x8a\x01\xff."[..], -1i64),
            (b"\x80\x02\x8a\x02\x00\x80.", -32768),
            (b"\x80\x02\x8a\x02\xff\x00.", 255),
            (b"\x80\x02\x8a\x00.", 0),
        ] {
            match unpickle(pkl)? {
                Value::Int(v) => assert_eq!(v, want),
                other => panic!("{}", other.kind()),
            }
        }
        Ok(())
    }

    #[test]
    fn python2_strings_and_v1_tensors_are_read() -> Result<()> {
        // {"w": _rebuild_tensor(storage, 1, (2,), (1,))} with Python 2 BINSTRING/SHORT_BINSTRING.
        let pkl = b"\x80\x02}(U\x01wctorch._utils\n_rebuild_tensor\n((T\x07\x00\x00\x00storage\
ctorch\nFloatStorage\nU\x010U\x03cpuK\x03tQK\x01K\x02\x85K\x01\x85tRu.";
        let mut up = Unpickler::new(pkl, "t.pkl");
        let root = up.load()?;
        let mut walk = Walk::new("t.pkl");
        walk.state_dict(&root, "", 0)?;
        let [(name, t)] = walk.found.as_slice() else {
            panic!("{} tensors", walk.found.len())
        };
        assert_eq!(name, "w");
        assert_eq!((t.offset, &t.shape, &t.strides), (1, &vec![2], &vec![1]));
        assert_eq!((&*t.storage.key, t.storage.numel), ("0", 3));
        Ok(())
    }

    #[test]
    fn stack_misuse_is_an_error_not_a_panic() {
        for (pkl, msg) in [
            (&b"\x80\x02s."[..], "empty stack"),
            (b"\x80\x02K\x01(\x85.", "pop across a MARK"),
            (b"\x80\x02(K\x01.", "objects left on the stack"),
            (b"\x80\x02h\x07.", "memo entry 7 is missing"),
            (b"\x80\x02X\xff\xff\xff\xffab.", "unexpected end of data"),
            (b"\x80\x02K\x01K\x02R.", "REDUCE arguments are not a tuple"),
        ] {
            let err = unpickle(pkl).expect_err(msg).to_string();
            assert!(err.contains(msg), "{msg}: {err}");
        }
    }

    /// Self-referencing objects (a list in itself, a dict in a tuple in itself, a dict that is
    /// its own key) would be `Rc` cycles that are never freed; they are refused. The same
    /// object twice in one container is no cycle and loads. (Found by the torch_checkpoint
    /// fuzz target as a LeakSanitizer report; the input is in fuzz/regressions.)
    #[test]
    fn self_referencing_objects_are_refused() -> Result<()> {
        for pkl in [
            &b"\x80\x02]q\x00h\x00a."[..],
            b"\x80\x02]q\x00(h\x00e.",
            b"\x80\x02}q\x00K\x01h\x00\x85s.",
            b"\x80\x02}q\x00h\x00K\x01s.",
            b"\x80\x02}q\x00(K\x01]q\x01h\x00aK\x02eu.",
            // d = {}; d["a"] = d
            b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s.",
        ] {
            let err = unpickle(pkl).expect_err("a cycle").to_string();
            assert!(err.contains("contains itself"), "{pkl:?}: {err}");
        }
        let Value::List(l) = unpickle(b"\x80\x02]q\x00]q\x01ah\x01a.")? else {
            panic!("not a list")
        };
        assert_eq!(l.borrow().len(), 2);
        Ok(())
    }

    /// Dicts of 64 references to the dict below, 8 levels deep: a 4 KB pickle describing 64⁸
    /// entries. The walks stop at their visit budget instead of running for years.
    #[test]
    fn widely_shared_containers_stop_the_walk() -> Result<()> {
        fn level(i: u8) -> Vec<u8> {
            let mut p = vec![b'}', b'q', i];
            if i > 0 {
                p.push(b'(');
                p.extend(b"X\x01\x00\x00\x00k");
                p.extend(level(i - 1));
                for _ in 1..64 {
                    p.extend(b"X\x01\x00\x00\x00k");
                    p.extend([b'h', i - 1]);
                }
                p.push(b'u');
            }
            p
        }
        let mut pkl = b"\x80\x02".to_vec();
        pkl.extend(level(8));
        pkl.push(b'.');
        assert!(pkl.len() < 5000);
        let root = unpickle(&pkl)?;
        let budget = |e: candle_core::Error| {
            let e = e.to_string();
            assert!(e.contains("more than 1048576 entries"), "{e}");
        };
        budget(Walk::new("t.pkl").state_dict(&root, "", 0).unwrap_err());
        budget(Walk::new("t.pkl").objects(&root, "", 0).unwrap_err());
        Ok(())
    }

    #[test]
    fn huge_expanded_views_are_refused() {
        let storage = Rc::new(StorageRef {
            ty: StorageType::Supported(DType::F32),
            key: "0".into(),
            numel: 1,
        });
        let expanded = |n: usize| TensorRef {
            storage: storage.clone(),
            offset: 0,
            shape: vec![n],
            strides: vec![0],
        };
        let data = 1.5f32.to_le_bytes();
        let small = materialize("x".into(), &expanded(3), &data, "t.pth").expect("small");
        assert_eq!(small.data, [data, data, data].concat());
        let err = materialize("x".into(), &expanded(1 << 40), &data, "t.pth")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("expanded views that large are refused"),
            "{err}"
        );
    }
}
