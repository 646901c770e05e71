//! GGUF files (llama.cpp's format): a strict reader for versions 2 and 3, dequantization of F32,
//! F16, BF16, Q8_0, Q4_0 and Q4_1 exactly as ggml does it, and the conversion of a llama GGUF into
//! a Hugging Face model folder ([`import`]).
//!
//! Layout (all little-endian): magic `GGUF`, u32 version, u64 tensor count, u64 metadata count,
//! the metadata key/values, one info per tensor (name, dims with ne0 the fastest, ggml type, offset
//! into the data section), padding to `general.alignment` (default 32), then the data section.

mod import;
mod tokenizer;

pub use import::{import, Imported};

use std::collections::BTreeMap;

use crate::model::ModelError;

/// What is wrong with a GGUF file, as a sentence.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("not a GGUF file: it starts with {found:?} instead of \"GGUF\"")]
    BadMagic { found: String },
    #[error("GGUF version {0} is not supported: loratab reads versions 2 and 3")]
    Version(u32),
    #[error("the file is truncated: {what} needs bytes {start}..{end} but the file has {len} bytes")]
    Truncated { what: String, start: u64, end: u64, len: u64 },
    #[error("{what} is not valid: {reason}")]
    Malformed { what: String, reason: String },
    #[error("tensor `{name}` lies outside the data section: it claims bytes {start}..{end} of {len} (the file is truncated or its tensor table is wrong)")]
    OutOfBounds { name: String, start: u64, end: u64, len: u64 },
    #[error("tensor `{name}` has ggml type {code}, which loratab does not know")]
    UnknownType { name: String, code: u32 },
    #[error("tensor `{name}` is stored as {kind}; loratab imports F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors (convert the model to one of these, e.g. Q8_0)")]
    UnsupportedType { name: String, kind: &'static str },
    #[error("architecture `{0}` is not supported: loratab imports llama GGUF files")]
    Architecture(String),
    #[error("metadata `{0}` is missing")]
    MissingKey(String),
    #[error("metadata `{key}` should be {expected}")]
    KeyType { key: String, expected: &'static str },
    #[error("{0} is not supported by loratab")]
    Unsupported(String),
    #[error("tensor `{0}` is missing")]
    MissingTensor(String),
    #[error("tensor `{0}` is not part of a llama model loratab can import")]
    UnexpectedTensor(String),
    #[error("tensor `{name}` has shape {found:?} but the metadata implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("the vocabulary cannot be converted: {0}")]
    Tokenizer(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type, as i64 (GGUF writers differ in which width they pick).
    pub fn as_int(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => i64::try_from(x).ok()?,
            Value::I64(x) => x,
            _ => return None,
        })
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(x) => Some(x),
            Value::F64(x) => Some(x as f32),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A ggml tensor type: its code, name, and (block length in values, block size in bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Kind {
    pub code: u32,
    pub name: &'static str,
    pub block: u64,
    pub bytes: u64,
}

/// Every type gguf-py knows (GGML_QUANT_SIZES), so unsupported ones are named and bounds-checked too.
const KINDS: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl Kind {
    pub fn from_code(code: u32) -> Option<Kind> {
        KINDS
            .iter()
            .find(|k| k.0 == code)
            .map(|&(code, name, block, bytes)| Kind { code, name, block, bytes })
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] (ne0) is the fastest-varying; a torch shape is these reversed.
    pub dims: Vec<u64>,
    pub kind: Kind,
    /// Byte offset into the data section.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape as torch (and safetensors) write it: slowest dimension first.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file, borrowing its bytes.
#[derive(Debug)]
pub struct Gguf<'a> {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: &'a [u8],
}

/// A cursor that refuses to read past the end, naming what it was reading.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let end = (self.pos as u64).checked_add(n).filter(|&e| e <= self.bytes.len() as u64).ok_or_else(|| {
            GgufError::Truncated {
                what: what(),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n),
                len: self.bytes.len() as u64,
            }
        })?;
        let out = &self.bytes[self.pos..end as usize];
        self.pos = end as usize;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| GgufError::Malformed { what: what(), reason: "it is not UTF-8 text".into() })
    }

    /// A count of items each at least `min_size` bytes long; a count the rest of the file cannot hold
    /// is a lie (or a truncation), caught before anything is allocated for it.
    fn count(&mut self, min_size: u64, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        let n = self.u64(what)?;
        let left = (self.bytes.len() - self.pos) as u64;
        if n.saturating_mul(min_size) > left {
            return Err(GgufError::Truncated {
                what: format!("{} ({n} entries)", what()),
                start: self.pos as u64,
                end: (self.pos as u64).saturating_add(n.saturating_mul(min_size)),
                len: self.bytes.len() as u64,
            });
        }
        Ok(n)
    }

    fn value(&mut self, code: u32, depth: u32, what: &dyn Fn() -> String) -> Result<Value, GgufError> {
        Ok(match code {
            0 => Value::U8(self.array::<1>(what)?[0]),
            1 => Value::I8(self.array::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Malformed { what: what(), reason: format!("bool byte {b} is neither 0 nor 1") }),
            },
            8 => Value::Str(self.string(what)?),
            9 if depth < 4 => {
                let inner = self.u32(what)?;
                let min_size = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => 1,
                };
                let n = self.count(min_size, what)?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(inner, depth + 1, what)?);
                }
                Value::Array(items)
            }
            9 => return Err(GgufError::Malformed { what: what(), reason: "arrays are nested too deeply".into() }),
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            c => return Err(GgufError::Malformed { what: what(), reason: format!("value type {c} does not exist") }),
        })
    }
}

const MAX_DIMS: u32 = 4;

impl<'a> Gguf<'a> {
    /// Parse the header, metadata and tensor table, and check that every tensor lies inside the
    /// data section at an aligned offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, GgufError> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4, &|| "the magic number".into()).map_err(|_| GgufError::BadMagic {
            found: String::from_utf8_lossy(bytes).into_owned(),
        })?;
        if magic != b"GGUF" {
            return Err(GgufError::BadMagic { found: String::from_utf8_lossy(magic).into_owned() });
        }
        let version = r.u32(&|| "the version".into())?;
        if !(2..=3).contains(&version) {
            // A big-endian file reads as a huge version here; it is not supported either.
            return Err(GgufError::Version(version));
        }
        // A tensor info is at least 8 (name length) + 4 + 8 + 4 + 8 bytes; a key/value at least 8 + 4 + 1.
        let n_tensors = r.count(32, &|| "the tensor count".into())?;
        let n_kv = r.count(13, &|| "the metadata count".into())?;
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata `{key}`");
            let code = r.u32(&what)?;
            let value = r.value(code, 0, &what)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Malformed { what: what(), reason: "the key appears twice".into() });
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_int() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
                _ => {
                    return Err(GgufError::Malformed {
                        what: "metadata `general.alignment`".into(),
                        reason: format!("{v:?} is not a positive power of two"),
                    })
                }
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("the name of tensor #{i}"))?;
            let what = || format!("the info of tensor `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Malformed { what: what(), reason: format!("{n_dims} dimensions (ggml has 1 to 4)") });
            }
            let dims = (0..n_dims).map(|_| r.u64(&what)).collect::<Result<Vec<_>, _>>()?;
            let code = r.u32(&what)?;
            let offset = r.u64(&what)?;
            let kind = Kind::from_code(code).ok_or_else(|| GgufError::UnknownType { name: name.clone(), code })?;
            let count = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let Some(count) = count.filter(|&c| c <= u64::MAX / kind.bytes) else {
                return Err(GgufError::Malformed { what: what(), reason: format!("dimensions {dims:?} overflow") });
            };
            if dims[0] % kind.block != 0 {
                return Err(GgufError::Malformed {
                    what: what(),
                    reason: format!("its rows of {} values do not fill whole {} blocks of {}", dims[0], kind.name, kind.block),
                });
            }
            if offset % alignment != 0 {
                return Err(GgufError::Malformed {
                    what: what(),
                    reason: format!("offset {offset} is not a multiple of the alignment {alignment}"),
                });
            }
            if tensors.iter().any(|t: &TensorInfo| t.name == name) {
                return Err(GgufError::Malformed { what: what(), reason: "the name appears twice".into() });
            }
            let size = count / kind.block * kind.bytes;
            tensors.push(TensorInfo { name, dims, kind, offset, size });
        }
        let start = (r.pos as u64).div_ceil(alignment) * alignment;
        let data = bytes.get(start as usize..).unwrap_or(&[]);
        for t in &tensors {
            let end = t.offset.checked_add(t.size).unwrap_or(u64::MAX);
            if end > data.len() as u64 {
                return Err(GgufError::OutOfBounds { name: t.name.clone(), start: t.offset, end, len: data.len() as u64 });
            }
        }
        Ok(Gguf { version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The stored bytes of a tensor (in bounds: checked by `parse`).
    pub fn raw(&self, t: &TensorInfo) -> &'a [u8] {
        &self.data[t.offset as usize..(t.offset + t.size) as usize]
    }

    /// A tensor's values as f32, in ggml order (ne0 fastest = torch's row-major of `shape()`).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        dequantize(t.kind, self.raw(t)).ok_or_else(|| GgufError::UnsupportedType { name: t.name.clone(), kind: t.kind.name })
    }
}

/// ggml's dequantization of one tensor's bytes (whole blocks); None for types loratab does not decode.
/// Products are plain f32 `q * d (+ m)`, as ggml's reference `dequantize_row_*` computes them.
pub fn dequantize(kind: Kind, bytes: &[u8]) -> Option<Vec<f32>> {
    let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
    let blocks = bytes.chunks_exact(kind.bytes as usize);
    Some(match kind.name {
        "F32" => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        "F16" => bytes.chunks_exact(2).map(f16).collect(),
        "BF16" => bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        // d: f16 scale, then 32 signed bytes.
        "Q8_0" => blocks
            .flat_map(|b| {
                let d = f16(b);
                b[2..34].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
        // d, then 16 bytes: low nibbles are values 0..16, high nibbles 16..32; value = (q − 8)·d.
        "Q4_0" => blocks
            .flat_map(|b| {
                let d = f16(b);
                nibbles(&b[2..18]).map(move |q| (q - 8.0) * d)
            })
            .collect(),
        // d, m, then nibbles as Q4_0; value = q·d + m.
        "Q4_1" => blocks
            .flat_map(|b| {
                let (d, m) = (f16(b), f16(&b[2..]));
                nibbles(&b[4..20]).map(move |q| q * d + m)
            })
            .collect(),
        _ => return None,
    })
}

/// One Q4 block's 32 quants: the low nibbles of its 16 bytes, then the high ones.
fn nibbles(qs: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let low = qs.iter().map(|&q| (q & 0x0f) as f32);
    let high = qs.iter().map(|&q| (q >> 4) as f32);
    low.chain(high)
}
