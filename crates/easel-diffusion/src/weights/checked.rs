//! A `VarBuilder` backend with clear errors and usage tracking.
//!
//! [`CheckedTensors`] serves the tensors of one source (a map of tensors, safetensors buffers
//! or already memory-mapped safetensors files) to model constructors. A missing tensor fails
//! with `missing tensor '<key>' (expected shape [..]) in <source>`, a wrong shape with
//! `tensor '<key>' in <source>: expected shape [..], found [..]`, both before any data is read;
//! tensors are converted to the `VarBuilder`'s dtype and device (an f16 file loads into an f32
//! model). [`CheckedTensors::unused`] lists the tensors the model never asked for.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::{BufferedSafetensors, MmapedSafetensors};
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::layout::check_safetensors_bytes;
use super::ldm_keys::is_ldm_checkpoint;

/// Where the tensors live.
enum Store {
    Map(HashMap<String, Tensor>),
    /// Safetensors buffers, with the buffer index of every tensor.
    Buffers(Vec<BufferedSafetensors>, HashMap<String, usize>),
    Mmaped(MmapedSafetensors),
}

impl Store {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match self {
            Self::Map(map) => map.keys().cloned().collect(),
            Self::Buffers(_, routing) => routing.keys().cloned().collect(),
            Self::Mmaped(st) => st.tensors().into_iter().map(|(name, _)| name).collect(),
        };
        names.sort();
        names.dedup();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match self {
            Self::Map(map) => map.get(name).map(|t| t.dims().to_vec()),
            Self::Buffers(buffers, routing) => {
                let view = buffers.get(*routing.get(name)?)?.get(name).ok()?;
                Some(view.shape().to_vec())
            }
            Self::Mmaped(st) => st.get(name).ok().map(|v| v.shape().to_vec()),
        }
    }

    fn load(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self {
            Self::Map(map) => match map.get(name) {
                Some(t) => t.to_device(device),
                None => candle_core::bail!("missing tensor '{name}'"),
            },
            Self::Buffers(buffers, routing) => {
                match routing.get(name).and_then(|&i| buffers.get(i)) {
                    Some(buffer) => buffer.load(name, device),
                    None => candle_core::bail!("missing tensor '{name}'"),
                }
            }
            Self::Mmaped(st) => st.load(name, device),
        }
    }
}

struct Inner {
    source: String,
    store: Store,
    /// The source has original single-file keys (for the missing-tensor hint).
    ldm_keys: bool,
    read: Mutex<HashSet<String>>,
}

/// Tensors of one named source, served to models through [`CheckedTensors::var_builder`] with
/// shape checks, dtype conversion and a record of what was read. Cheap to clone (shared).
#[derive(Clone)]
pub struct CheckedTensors {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CheckedTensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedTensors")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl CheckedTensors {
    fn new(source: String, store: Store) -> Self {
        let names = store.names();
        let ldm_keys = is_ldm_checkpoint(names.iter().map(String::as_str));
        Self {
            inner: Arc::new(Inner {
                source,
                store,
                ldm_keys,
                read: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// Serves `tensors`; `source` names them in messages (a file name, "unet of sd15.safetensors").
    pub fn from_tensors(source: impl Into<String>, tensors: HashMap<String, Tensor>) -> Self {
        Self::new(source.into(), Store::Map(tensors))
    }

    /// Serves the tensors of safetensors files held in memory, as `(file name, bytes)` (the
    /// shards of one component, or a single file). Pickle files and other non-safetensors data
    /// are refused (see [`super::layout::check_safetensors_bytes`]), as is a tensor name that
    /// appears in two shards.
    pub fn from_safetensors_buffers(
        source: impl Into<String>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Result<Self> {
        let mut buffers = Vec::with_capacity(files.len());
        let mut routing: HashMap<String, usize> = HashMap::new();
        let mut file_names = Vec::with_capacity(files.len());
        for (index, (file, bytes)) in files.into_iter().enumerate() {
            check_safetensors_bytes(&file, &bytes)?;
            let buffer = BufferedSafetensors::new(bytes)
                .map_err(|e| candle_core::Error::Msg(format!("{file}: {e}")))?;
            for (name, _) in buffer.tensors() {
                if let Some(&other) = routing.get(&name) {
                    candle_core::bail!(
                        "tensor '{name}' appears in both {} and {file}",
                        file_names[other]
                    )
                }
                routing.insert(name, index);
            }
            buffers.push(buffer);
            file_names.push(file);
        }
        Ok(Self::new(source.into(), Store::Buffers(buffers, routing)))
    }

    /// Serves memory-mapped safetensors files (opened by the caller, e.g. with
    /// `MmapedSafetensors::multi`).
    pub fn from_mmaped(source: impl Into<String>, tensors: MmapedSafetensors) -> Self {
        Self::new(source.into(), Store::Mmaped(tensors))
    }

    /// The source's name, as used in messages.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// All tensor names of the source, sorted.
    pub fn names(&self) -> Vec<String> {
        self.inner.store.names()
    }

    /// A `VarBuilder` reading these tensors as `dtype` on `device`.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    /// Tensors of the source that no model has read so far (sorted): after building a model,
    /// these are keys the model does not use (stale buffers, another component's weights, or
    /// a configuration that does not match the file).
    pub fn unused(&self) -> Vec<String> {
        let read = self.read_set();
        self.names()
            .into_iter()
            .filter(|n| !read.contains(n))
            .collect()
    }

    fn read_set(&self) -> HashSet<String> {
        match self.inner.read.lock() {
            Ok(read) => read.clone(),
            // A panic while the lock was held cannot leave the set inconsistent (only inserts).
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn mark_read(&self, name: &str) {
        let mut read = match self.inner.read.lock() {
            Ok(read) => read,
            Err(poisoned) => poisoned.into_inner(),
        };
        read.insert(name.to_string());
    }

    fn missing(&self, name: &str, expected: Option<&[usize]>) -> candle_core::Error {
        let shape = expected
            .map(|dims| format!(" (expected shape {dims:?})"))
            .unwrap_or_default();
        let hint = if self.inner.ldm_keys {
            "; the source has original single-file (LDM) keys: convert them with \
             weights::KeyMap first"
        } else {
            ""
        };
        candle_core::Error::Msg(format!(
            "missing tensor '{name}'{shape} in {}{hint}",
            self.inner.source
        ))
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> Result<Tensor> {
        let tensor = self
            .inner
            .store
            .load(name, device)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.inner.source)))?;
        self.mark_read(name);
        tensor.to_dtype(dtype)
    }
}

impl SimpleBackend for CheckedTensors {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let Some(found) = self.inner.store.shape(name) else {
            return Err(self.missing(name, Some(s.dims())));
        };
        if found != s.dims() {
            return Err(candle_core::Error::Msg(format!(
                "tensor '{name}' in {}: expected shape {:?}, found {found:?}",
                self.inner.source,
                s.dims()
            )));
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        if self.inner.store.shape(name).is_none() {
            return Err(self.missing(name, None));
        }
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.store.shape(name).is_some()
    }
}
