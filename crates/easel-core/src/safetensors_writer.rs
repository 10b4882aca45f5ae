//! The one safetensors writer of easel: every file easel writes (plugins, banks, converted
//! weights, training checkpoints, caches) goes through [`safetensors_bytes`].
//!
//! The bytes depend only on the contents: tensors are laid out by name (byte order), the header
//! lists `__metadata__` first (keys sorted) and then the tensors in that same order, each as
//! `{"dtype","shape","data_offsets"}`, padded with spaces to a multiple of 8 bytes as the
//! [format](https://github.com/huggingface/safetensors#format) allows. The `safetensors` crate's
//! own serializer is not used because it writes `__metadata__` from a `HashMap`, whose order
//! changes from run to run, so equal contents would give different bytes and hashes.

use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// One tensor to write: its name, element type, shape and little-endian element bytes (borrowed,
/// or made for the occasion, as when values are converted).
#[derive(Debug, Clone)]
pub struct TensorBytes<'a> {
    /// The tensor's name in the file (its state-dict key).
    pub name: &'a str,
    /// The element type.
    pub dtype: Dtype,
    /// The shape; the element count is its product (1 for a scalar).
    pub shape: &'a [usize],
    /// The elements, little-endian, `product(shape) × dtype.size()` bytes.
    pub data: Cow<'a, [u8]>,
}

/// Why a set of tensors cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// Two tensors share a name.
    #[error("tensor name {name:?} is given twice")]
    RepeatedName {
        /// The repeated name.
        name: String,
    },
    /// A tensor is named `__metadata__`, the key the header keeps for metadata.
    #[error("tensor name \"__metadata__\" is reserved for the file's metadata")]
    ReservedName,
    /// A tensor's bytes do not match its shape and element type.
    #[error(
        "tensor {name:?}: shape {shape:?} of {dtype:?} needs {expected} bytes, {actual} given"
    )]
    SizeMismatch {
        /// The tensor's name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// Its element type.
        dtype: Dtype,
        /// `product(shape) × dtype.size()`, or `None` where that overflows.
        expected: ExpectedBytes,
        /// The bytes given.
        actual: usize,
    },
    /// An element type whose elements are not whole bytes (F4, F6), which easel never writes.
    #[error("tensor {name:?}: element type {dtype:?} is not a whole number of bytes")]
    SubByteType {
        /// The tensor's name.
        name: String,
        /// Its element type.
        dtype: Dtype,
    },
}

/// The byte count a shape needs, or the note that it overflows `usize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedBytes {
    /// This many bytes.
    Bytes(usize),
    /// More than `usize::MAX` bytes.
    Overflow,
}

impl std::fmt::Display for ExpectedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedBytes::Bytes(n) => write!(f, "{n}"),
            ExpectedBytes::Overflow => f.write_str("more than usize::MAX"),
        }
    }
}

/// The safetensors file of `tensors` (in any order) with `metadata` (omitted when empty).
pub fn safetensors_bytes(
    tensors: &[TensorBytes<'_>],
    metadata: &BTreeMap<String, String>,
) -> Result<Vec<u8>, WriteError> {
    let mut sorted: Vec<&TensorBytes<'_>> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(b.name));
    for pair in sorted.windows(2) {
        if pair[0].name == pair[1].name {
            return Err(WriteError::RepeatedName {
                name: pair[0].name.to_string(),
            });
        }
    }
    let mut entries = Vec::with_capacity(sorted.len() + 1);
    if !metadata.is_empty() {
        let pairs: Vec<String> = metadata
            .iter()
            .map(|(k, v)| format!("{}:{}", json_string(k), json_string(v)))
            .collect();
        entries.push(format!("\"__metadata__\":{{{}}}", pairs.join(",")));
    }
    let mut offset = 0usize;
    for t in &sorted {
        check(t)?;
        let end = offset + t.data.len();
        let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
        // The crate's own derive names the type as its reader expects; serializing a unit
        // variant to a JSON string cannot fail, so the `unwrap` never fires.
        let dtype = serde_json::to_string(&t.dtype).unwrap();
        entries.push(format!(
            "{}:{{\"dtype\":{dtype},\"shape\":[{}],\"data_offsets\":[{offset},{end}]}}",
            json_string(t.name),
            shape.join(",")
        ));
        offset = end;
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    for t in sorted {
        out.extend_from_slice(&t.data);
    }
    Ok(out)
}

/// Refuses the reserved name and bytes that do not match the shape.
fn check(t: &TensorBytes<'_>) -> Result<(), WriteError> {
    if t.name == "__metadata__" {
        return Err(WriteError::ReservedName);
    }
    if !t.dtype.bitsize().is_multiple_of(8) {
        return Err(WriteError::SubByteType {
            name: t.name.to_string(),
            dtype: t.dtype,
        });
    }
    let expected = t
        .shape
        .iter()
        .try_fold(t.dtype.bitsize() / 8, |n, &d| n.checked_mul(d));
    if expected != Some(t.data.len()) {
        return Err(WriteError::SizeMismatch {
            name: t.name.to_string(),
            shape: t.shape.to_vec(),
            dtype: t.dtype,
            expected: expected.map_or(ExpectedBytes::Overflow, ExpectedBytes::Bytes),
            actual: t.data.len(),
        });
    }
    Ok(())
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_crate_reads_back_names_types_shapes_data_and_metadata() {
        let a: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b = [7u8, 8, 9];
        let tensors = [
            TensorBytes {
                name: "z.weight",
                dtype: Dtype::F32,
                shape: &[2],
                data: Cow::Borrowed(&a),
            },
            TensorBytes {
                name: "a \"quoted\"\n",
                dtype: Dtype::U8,
                shape: &[1, 3],
                data: Cow::Borrowed(&b),
            },
        ];
        let metadata = meta(&[("zeta", "é \"x\"\\"), ("alpha", "1")]);
        let bytes = safetensors_bytes(&tensors, &metadata).unwrap();
        let (header_len, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header_len % 8, 0);
        assert_eq!(
            header.metadata().clone().unwrap(),
            metadata.clone().into_iter().collect()
        );
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let z = st.tensor("z.weight").unwrap();
        assert_eq!(
            (z.dtype(), z.shape(), z.data()),
            (Dtype::F32, &[2][..], &a[..])
        );
        let q = st.tensor("a \"quoted\"\n").unwrap();
        assert_eq!(
            (q.dtype(), q.shape(), q.data()),
            (Dtype::U8, &[1, 3][..], &b[..])
        );
        // Data in name order: the U8 tensor's bytes come first.
        assert_eq!(&bytes[8 + header_len..], &[&b[..], &a[..]].concat()[..]);
    }

    #[test]
    fn equal_contents_give_equal_bytes_whatever_the_input_order() {
        let x = [0u8; 4];
        let y = [1u8; 8];
        let t1 = TensorBytes {
            name: "x",
            dtype: Dtype::F32,
            shape: &[1],
            data: Cow::Borrowed(&x),
        };
        let t2 = TensorBytes {
            name: "y",
            dtype: Dtype::F16,
            shape: &[2, 2],
            data: Cow::Borrowed(&y),
        };
        let m1 = meta(&[("b", "2"), ("a", "1"), ("c", "3")]);
        let m2 = meta(&[("c", "3"), ("a", "1"), ("b", "2")]);
        let first = safetensors_bytes(&[t1.clone(), t2.clone()], &m1).unwrap();
        let second = safetensors_bytes(&[t2, t1], &m2).unwrap();
        assert_eq!(first, second);
        let header_len = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&first[8..8 + header_len]).unwrap();
        assert_eq!(
            header.trim_end(),
            "{\"__metadata__\":{\"a\":\"1\",\"b\":\"2\",\"c\":\"3\"},\
             \"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\
             \"y\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[4,12]}}"
        );
    }

    #[test]
    fn empty_metadata_is_left_out_and_a_scalar_has_one_element() {
        let v = 3.0f32.to_le_bytes();
        let bytes = safetensors_bytes(
            &[TensorBytes {
                name: "s",
                dtype: Dtype::F32,
                shape: &[],
                data: Cow::Borrowed(&v),
            }],
            &BTreeMap::new(),
        )
        .unwrap();
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert!(header.metadata().is_none());
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("s").unwrap().data(), &v[..]);
    }

    #[test]
    fn bad_tensors_are_refused_by_name() {
        let four = [0u8; 4];
        let t = |name, dtype, shape: &'static [usize]| TensorBytes {
            name,
            dtype,
            shape,
            data: Cow::Borrowed(&four),
        };
        let none = BTreeMap::new();
        let cases: Vec<(Vec<TensorBytes<'_>>, WriteError)> = vec![
            (
                vec![t("w", Dtype::F32, &[1]), t("w", Dtype::F32, &[1])],
                WriteError::RepeatedName { name: "w".into() },
            ),
            (
                vec![t("__metadata__", Dtype::F32, &[1])],
                WriteError::ReservedName,
            ),
            (
                vec![t("w", Dtype::F32, &[2])],
                WriteError::SizeMismatch {
                    name: "w".into(),
                    shape: vec![2],
                    dtype: Dtype::F32,
                    expected: ExpectedBytes::Bytes(8),
                    actual: 4,
                },
            ),
            (
                vec![t("w", Dtype::F32, &[usize::MAX, 2])],
                WriteError::SizeMismatch {
                    name: "w".into(),
                    shape: vec![usize::MAX, 2],
                    dtype: Dtype::F32,
                    expected: ExpectedBytes::Overflow,
                    actual: 4,
                },
            ),
        ];
        for (tensors, expected) in cases {
            assert_eq!(safetensors_bytes(&tensors, &none).unwrap_err(), expected);
        }
    }
}
