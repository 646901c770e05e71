//! Frozen weights in their storage format: [`WeightFormat`] (f32, f16, bf16, and ggml's Q8_0, Q4_0,
//! Q4_1) and [`Weight`], a row-major matrix packed into the 32-bit words the GPU reads. The
//! dequantization here ([`Weight::to_f32`]) is the CPU reference of `shaders/weight_<format>.wgsl`,
//! which decodes the same words inside the kernels that read a weight (matmul's B operand, the
//! embedding table), so only the compact bytes ever live on the GPU.
//!
//! GPU layout (flat row-major value index i; every block 4-byte aligned, unlike ggml's 18-byte Q4_0):
//!   f32    word i = the value's bits
//!   f16    word i/2: value 2j in the low half, 2j+1 in the high half (unpack2x16float)
//!   bf16   word i/2: the same halves, each the top 16 bits of an f32
//!   Q8_0   9 words per block of 32: word 0 = f16 scale d (low half), words 1..9 = 32 i8 quants in
//!          order (byte k of word 1 + j is value 4j + k);                    value = q · d
//!   Q4_0   5 words per block of 32: word 0 = f16 d, words 1..5 = 32 u4 quants in value order
//!          (nibble k of word 1 + j is value 8j + k);                        value = (q − 8) · d
//!   Q4_1   5 words per block of 32: word 0 = f16 d (low) and f16 m (high), then nibbles as Q4_0;
//!                                                                           value = q · d + m
//! Q4_1 keeps ggml's 20 bytes per block; Q8_0 (36 vs 34) and Q4_0 (20 vs 18) pad their scale to a word.
//! The products are plain f32 `q · d (+ m)` as ggml's `dequantize_row_*` computes them.

use super::{HostTensor, ModelError};

/// How a frozen weight is stored (on the host and on the GPU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 6] = [Self::F32, Self::F16, Self::Bf16, Self::Q8_0, Self::Q4_0, Self::Q4_1];

    /// The name users type (`--base-dtype`) and see: f32, f16, bf16, q8_0, q4_0, q4_1.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
        }
    }

    /// Parse a name (case-insensitive, as [`WeightFormat::name`] or ggml's `Q8_0`).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Values per block (the unit a row must be a whole number of) and 32-bit words per block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 1),
            Self::F16 | Self::Bf16 => (2, 1),
            Self::Q8_0 => (32, 9),
            Self::Q4_0 | Self::Q4_1 => (32, 5),
        }
    }

    /// Whether a row of `cols` values must split into ggml blocks (the quantized formats).
    pub fn is_quantized(self) -> bool {
        self.block().0 == 32
    }

    /// GPU bytes of `n` values in this format.
    pub fn bytes(self, n: usize) -> u64 {
        let (values, words) = self.block();
        (n.div_ceil(values) * words * 4) as u64
    }
}

impl std::fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A row-major [rows, cols] (or 1-D) weight packed in `format` (see the module comment for layouts).
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    pub format: WeightFormat,
    pub shape: Vec<usize>,
    pub words: Vec<u32>,
}

fn f16_bits(x: f32) -> u32 {
    half::f16::from_f32(x).to_bits() as u32
}

fn f16_value(bits: u32) -> f32 {
    half::f16::from_bits(bits as u16).to_f32()
}

impl Weight {
    /// Values held (the product of the shape).
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Columns of a matrix (the length of a 1-D weight).
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Bytes on the GPU.
    pub fn bytes(&self) -> u64 {
        (self.words.len() * 4) as u64
    }

    /// Check that `shape` can be stored in `format`: quantized rows are whole blocks of 32, as ggml
    /// requires (a block never spans two rows, so row blocks of a matrix can be cut apart).
    fn check(format: WeightFormat, shape: &[usize], name: &str) -> Result<(), ModelError> {
        let cols = shape.last().copied().unwrap_or(1);
        let (block, _) = format.block();
        if format.is_quantized() && cols % block != 0 {
            return Err(ModelError::Format {
                name: name.to_string(),
                detail: format!(
                    "its rows hold {cols} values, not a multiple of {format}'s block of {block}; keep this model in f16 or f32 (--base-dtype f16)"
                ),
            });
        }
        Ok(())
    }

    /// Pack f32 values into `format`: exact for f32; round to nearest even for f16 and bf16;
    /// ggml's reference quantizers (`quantize_row_*_ref`) for Q8_0, Q4_0 and Q4_1. `name` says
    /// which tensor a refusal is about.
    pub fn from_f32(t: &HostTensor, format: WeightFormat, name: &str) -> Result<Self, ModelError> {
        Self::check(format, &t.shape, name)?;
        let x = &t.data;
        let words = match format {
            WeightFormat::F32 => x.iter().map(|v| v.to_bits()).collect(),
            WeightFormat::F16 => pairs(x, |v| half::f16::from_f32(v).to_bits()),
            WeightFormat::Bf16 => pairs(x, |v| half::bf16::from_f32(v).to_bits()),
            WeightFormat::Q8_0 => x.chunks(32).flat_map(quantize_q8_0).collect(),
            WeightFormat::Q4_0 => x.chunks(32).flat_map(quantize_q4_0).collect(),
            WeightFormat::Q4_1 => x.chunks(32).flat_map(quantize_q4_1).collect(),
        };
        Ok(Self { format, shape: t.shape.clone(), words })
    }

    /// Repack the stored bytes of a safetensors F16/BF16 tensor or a ggml tensor (F32, F16, BF16,
    /// Q8_0, Q4_0, Q4_1 blocks, little-endian) of `shape` into the GPU layout. `bytes` must hold
    /// exactly the tensor (the readers check bounds); a row that is not whole blocks is refused.
    pub fn from_stored(format: WeightFormat, shape: &[usize], bytes: &[u8], name: &str) -> Result<Self, ModelError> {
        Self::check(format, shape, name)?;
        let n: usize = shape.iter().product();
        let ggml_block = match format {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::Bf16 => 4, // two values
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
        };
        let expected = match format {
            WeightFormat::F32 => n * 4,
            WeightFormat::F16 | WeightFormat::Bf16 => n * 2,
            _ => n / 32 * ggml_block,
        };
        if bytes.len() != expected {
            return Err(ModelError::Format {
                name: name.to_string(),
                detail: format!("{} bytes hold {format} data for {n} values only if there are {expected}; the file is truncated or corrupted", bytes.len()),
            });
        }
        let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let le16 = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) as u32;
        let words = match format {
            WeightFormat::F32 => bytes.chunks_exact(4).map(le).collect(),
            WeightFormat::F16 | WeightFormat::Bf16 => {
                // An odd count leaves the last word's high half zero.
                bytes.chunks(4).map(|c| if c.len() == 4 { le(c) } else { le16(c) }).collect()
            }
            WeightFormat::Q8_0 => bytes
                .chunks_exact(34)
                .flat_map(|b| std::iter::once(le16(b)).chain(b[2..].chunks_exact(4).map(le)))
                .collect(),
            WeightFormat::Q4_0 => bytes.chunks_exact(18).flat_map(|b| q4_block(le16(b), &b[2..18])).collect(),
            WeightFormat::Q4_1 => bytes.chunks_exact(20).flat_map(|b| q4_block(le(b), &b[4..20])).collect(),
        };
        Ok(Self { format, shape: shape.to_vec(), words })
    }

    /// Refuse a weight holding NaN or ±∞ (a quantized block's scale or minimum, or any value of
    /// the float formats): it would make every loss NaN without saying why.
    pub fn check_finite(&self, name: &str) -> Result<(), ModelError> {
        // Decoded half by half: no f32 copy of a large weight just to look at it.
        let n = self.len();
        let scales = |per: usize| self.words.chunks_exact(per).flat_map(|b| [b[0] & 0xffff, b[0] >> 16]).map(f16_value);
        let bad = match self.format {
            WeightFormat::F32 => self.words.iter().any(|&b| !f32::from_bits(b).is_finite()),
            WeightFormat::F16 => halves(&self.words).take(n).any(|h| !f16_value(h).is_finite()),
            WeightFormat::Bf16 => halves(&self.words).take(n).any(|h| !f32::from_bits(h << 16).is_finite()),
            WeightFormat::Q8_0 => scales(9).any(|v| !v.is_finite()),
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => scales(5).any(|v| !v.is_finite()),
        };
        if bad {
            return Err(ModelError::NonFinite { name: name.to_string() });
        }
        Ok(())
    }

    /// The values as f32: the CPU reference of `shaders/weight_<format>.wgsl`.
    pub fn to_f32(&self) -> HostTensor {
        let n = self.len();
        let w = &self.words;
        let data: Vec<f32> = match self.format {
            WeightFormat::F32 => w.iter().map(|&b| f32::from_bits(b)).collect(),
            WeightFormat::F16 => halves(w).map(f16_value).take(n).collect(),
            WeightFormat::Bf16 => halves(w).map(|h| f32::from_bits(h << 16)).take(n).collect(),
            WeightFormat::Q8_0 => w
                .chunks_exact(9)
                .flat_map(|b| {
                    let d = f16_value(b[0] & 0xffff);
                    b[1..].iter().flat_map(|q| q.to_le_bytes()).map(move |q| q as i8 as f32 * d)
                })
                .collect(),
            WeightFormat::Q4_0 => w
                .chunks_exact(5)
                .flat_map(|b| {
                    let d = f16_value(b[0] & 0xffff);
                    nibbles(&b[1..]).map(move |q| (q - 8.0) * d)
                })
                .collect(),
            WeightFormat::Q4_1 => w
                .chunks_exact(5)
                .flat_map(|b| {
                    let (d, m) = (f16_value(b[0] & 0xffff), f16_value(b[0] >> 16));
                    nibbles(&b[1..]).map(move |q| q * d + m)
                })
                .collect(),
        };
        HostTensor::new(data, self.shape.clone())
    }

    /// The same values in another format (dequantize, then pack): `--base-dtype`.
    pub fn convert(&self, format: WeightFormat, name: &str) -> Result<Self, ModelError> {
        if format == self.format {
            return Ok(self.clone());
        }
        Self::from_f32(&self.to_f32(), format, name)
    }

    /// Words per row, when every row starts on a word (true for quantized rows, f32, and 16-bit
    /// formats with an even row length).
    fn row_words(&self) -> Option<usize> {
        let (values, words) = self.format.block();
        (self.cols() % values == 0).then(|| self.cols() / values * words)
    }

    /// Rows `row0 .. row0 + n` of a matrix, in the same format.
    pub fn slice_rows(&self, row0: usize, n: usize) -> Self {
        let cols = self.cols();
        let mut shape = self.shape.clone();
        shape[0] = n;
        match self.row_words() {
            Some(rw) => Self { format: self.format, shape, words: self.words[row0 * rw..(row0 + n) * rw].to_vec() },
            None => {
                let all = self.to_f32();
                let part = HostTensor::new(all.data[row0 * cols..(row0 + n) * cols].to_vec(), shape);
                Self::from_f32(&part, self.format, "a row slice").expect("16-bit formats take any shape")
            }
        }
    }

    /// The matrix with its rows reordered: row r of the result is row `order[r]` of this one.
    pub fn permute_rows(&self, order: &[usize]) -> Self {
        match self.row_words() {
            Some(rw) => Self {
                format: self.format,
                shape: self.shape.clone(),
                words: order.iter().flat_map(|&r| self.words[r * rw..(r + 1) * rw].iter().copied()).collect(),
            },
            None => {
                let (all, cols) = (self.to_f32(), self.cols());
                let data = order.iter().flat_map(|&r| all.data[r * cols..(r + 1) * cols].iter().copied()).collect();
                Self::from_f32(&HostTensor::new(data, self.shape.clone()), self.format, "permuted rows")
                    .expect("16-bit formats take any shape")
            }
        }
    }
}

/// Two 16-bit encodings per word, the even value in the low half.
fn pairs(x: &[f32], bits: impl Fn(f32) -> u16) -> Vec<u32> {
    x.chunks(2).map(|p| bits(p[0]) as u32 | (p.get(1).map_or(0, |&v| bits(v)) as u32) << 16).collect()
}

/// The 16-bit halves of words, low first.
fn halves(w: &[u32]) -> impl Iterator<Item = u32> + '_ {
    w.iter().flat_map(|&x| [x & 0xffff, x >> 16])
}

/// A Q4 block's 32 quants in value order from 4 words.
fn nibbles(w: &[u32]) -> impl Iterator<Item = f32> + '_ {
    w.iter().flat_map(|&x| (0..8).map(move |k| ((x >> (4 * k)) & 0xf) as f32))
}

/// A GPU Q4 block from its head word and ggml's 16 bytes (value j in the low nibble of byte j,
/// value j + 16 in the high nibble): the quants are put in value order, 8 per word.
fn q4_block(head: u32, qs: &[u8]) -> [u32; 5] {
    let q = |j: usize| if j < 16 { (qs[j] & 0xf) as u32 } else { (qs[j - 16] >> 4) as u32 };
    let mut out = [head, 0, 0, 0, 0];
    for j in 0..32 {
        out[1 + j / 8] |= q(j) << (4 * (j % 8));
    }
    out
}

/// Quants in value order packed 8 nibbles per word, after a head word.
fn pack_q4(head: u32, q: impl Fn(usize) -> u32) -> [u32; 5] {
    let mut out = [head, 0, 0, 0, 0];
    for j in 0..32 {
        out[1 + j / 8] |= (q(j) & 0xf) << (4 * (j % 8));
    }
    out
}

/// ggml's `quantize_row_q8_0_ref`: d = max|x| / 127, q = round(x / d).
fn quantize_q8_0(x: &[f32]) -> [u32; 9] {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [f16_bits(d); 9];
    for (j, word) in out[1..].iter_mut().enumerate() {
        *word = 0;
        for k in 0..4 {
            let q = (x[4 * j + k] * id).round() as i8;
            *word |= (q as u8 as u32) << (8 * k);
        }
    }
    out
}

/// ggml's `quantize_row_q4_0_ref`: d = (the value of largest magnitude) / −8, q = min(15, ⌊x/d + 8.5⌋).
fn quantize_q4_0(x: &[f32]) -> [u32; 5] {
    let max = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    pack_q4(f16_bits(d), |j| ((x[j] * id + 8.5) as i8).min(15) as u32)
}

/// ggml's `quantize_row_q4_1_ref`: d = (max − min) / 15, m = min, q = min(15, ⌊(x − m)/d + 0.5⌋).
fn quantize_q4_1(x: &[f32]) -> [u32; 5] {
    let (min, max) = x.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    pack_q4(f16_bits(d) | f16_bits(min) << 16, |j| (((x[j] - min) * id + 0.5) as i8).min(15) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013).collect()
    }

    #[test]
    fn packing_round_trips_and_quantization_error_is_bounded() {
        let t = HostTensor::new(values(64 * 3), vec![3, 64]);
        for f in WeightFormat::ALL {
            let w = Weight::from_f32(&t, f, "t").unwrap();
            assert_eq!(w.bytes(), f.bytes(t.data.len()), "{f}");
            let back = w.to_f32();
            assert_eq!(back.shape, t.shape);
            // Max error: exact for f32, half an ulp for 16-bit, half a step for the quantizers.
            let bound = match f {
                WeightFormat::F32 => 0.0,
                WeightFormat::F16 => 4e-4,
                WeightFormat::Bf16 => 3e-3,
                // Half a step, plus the f16 rounding of the scale (over 127 steps).
                WeightFormat::Q8_0 => 0.65 / 127.0 * 0.52,
                _ => 0.65 / 7.0,
            };
            let err = t.data.iter().zip(&back.data).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= bound, "{f}: error {err} > {bound}");
            // Packing dequantized values again is lossless (the scales are reproduced).
            if !f.is_quantized() {
                assert_eq!(Weight::from_f32(&back, f, "t").unwrap().to_f32(), back, "{f}");
            }
        }
    }

    #[test]
    fn non_finite_weights_are_named() {
        for f in WeightFormat::ALL {
            let mut x = values(64);
            x[37] = if f.is_quantized() { 1e30 } else { f32::NAN }; // a quantized scale overflows f16 to ∞
            let w = Weight::from_f32(&HostTensor::new(x, vec![2, 32]), f, "w").unwrap();
            assert!(matches!(w.check_finite("layer.w"), Err(ModelError::NonFinite { ref name }) if name == "layer.w"), "{f}");
            let ok = Weight::from_f32(&HostTensor::new(values(64), vec![2, 32]), f, "w").unwrap();
            assert!(ok.check_finite("w").is_ok(), "{f}");
        }
    }

    #[test]
    fn quantized_rows_must_be_whole_blocks() {
        let t = HostTensor::new(values(40), vec![1, 40]);
        assert!(matches!(Weight::from_f32(&t, WeightFormat::Q4_0, "w"), Err(ModelError::Format { .. })));
        assert!(Weight::from_f32(&t, WeightFormat::F16, "w").is_ok());
    }

    #[test]
    fn slices_and_permutations_keep_values() {
        for (f, cols) in [(WeightFormat::F16, 5), (WeightFormat::Q4_1, 32), (WeightFormat::Bf16, 6)] {
            let t = HostTensor::new(values(4 * cols), vec![4, cols]);
            let w = Weight::from_f32(&t, f, "w").unwrap();
            let all = w.to_f32().data;
            assert_eq!(w.slice_rows(1, 2).to_f32().data, all[cols..3 * cols].to_vec(), "{f}");
            let p = w.permute_rows(&[2, 0, 3, 1]).to_f32().data;
            let want: Vec<f32> = [2, 0, 3, 1].iter().flat_map(|&r| all[r * cols..(r + 1) * cols].to_vec()).collect();
            assert_eq!(p, want, "{f}");
        }
    }
}
