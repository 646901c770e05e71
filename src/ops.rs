//! Op descriptions shared by the GPU launchers (`gpu::<op>`) and the CPU references (`reference::<op>`),
//! so both sides agree on what an op computes.

/// How the two operands of a matmul are stored (row-major).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// X·W: A [M, K], B [K, N].
    XW,
    /// X·Wᵀ: A [M, K], B [N, K] (a Linear layer's forward with W [out, in]; dX = dY·W uses XW).
    XWt,
    /// Xᵀ·G: A [K, M], B [K, N] (weight gradients: dW = Xᵀ·dY).
    XtG,
    /// Xᵀ·Wᵀ: A [K, M], B [N, K] (merging a LoRA update into a Conv1D [in, out] weight: Aᵀ·Bᵀ).
    XtWt,
}

impl Layout {
    pub fn trans_a(self) -> bool {
        matches!(self, Layout::XtG | Layout::XtWt)
    }
    pub fn trans_b(self) -> bool {
        matches!(self, Layout::XWt | Layout::XtWt)
    }
}

/// C[b] = alpha · op(A[b])·op(B[b]) + beta · C[b] + bias, for b in 0..batch. C is [M, N].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Matmul {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub layout: Layout,
    pub batch: usize,
    /// B is one matrix shared by every batch entry (a weight), rather than one per entry.
    pub shared_b: bool,
    pub alpha: f32,
    /// 0 overwrites C without reading it; 1 accumulates into it.
    pub beta: f32,
    /// Row pitch of C (≥ n): C may be a block of columns inside a wider matrix.
    pub ldc: usize,
    /// Where C starts inside its buffer (in floats). Bias is indexed by the column inside this block
    /// plus `bias_offset`.
    pub c_offset: usize,
    pub bias_offset: usize,
    /// Row pitch of A (≥ k) when A is [M, K] (not transposed): A may be a block of columns too.
    pub lda: usize,
    /// Where A starts inside its buffer (in floats).
    pub a_offset: usize,
}

impl Matmul {
    /// A plain single matmul: C = op(A)·op(B).
    pub fn new(m: usize, n: usize, k: usize, layout: Layout) -> Self {
        Self { m, n, k, layout, batch: 1, shared_b: false, alpha: 1.0, beta: 0.0, ldc: n, c_offset: 0, bias_offset: 0, lda: k, a_offset: 0 }
    }
    pub fn batched(self, batch: usize, shared_b: bool) -> Self {
        Self { batch, shared_b, ..self }
    }
    pub fn scaled(self, alpha: f32, beta: f32) -> Self {
        Self { alpha, beta, ..self }
    }
    /// Write C as columns `col0..col0 + n` of a matrix with `ldc` columns starting at `c_offset`,
    /// taking the bias from `bias[col0..]` (a layer split by output rows writes its parts side by side).
    pub fn into_block(self, ldc: usize, c_offset: usize, col0: usize) -> Self {
        Self { ldc, c_offset: c_offset + col0, bias_offset: col0, ..self }
    }
    /// Read A [M, K] as columns `col0..col0 + k` of a matrix with `lda` columns (layouts X·W and
    /// X·Wᵀ only: a transposed A keeps its plain [K, M] storage).
    pub fn from_block(self, lda: usize, col0: usize) -> Self {
        assert!(!self.layout.trans_a() && lda >= self.k, "from_block needs a row-major A no wider than lda");
        Self { lda, a_offset: col0, ..self }
    }
    pub fn a_len(&self) -> usize {
        if self.batch * self.m * self.k == 0 { 0 } else { self.a_offset + (self.batch * self.m - 1) * self.lda + self.k }
    }
    pub fn b_len(&self) -> usize {
        if self.shared_b { self.k * self.n } else { self.batch * self.k * self.n }
    }
    /// Floats C's buffer must hold (up to the last element written).
    pub fn c_len(&self) -> usize {
        if self.batch * self.m * self.n == 0 { 0 } else { self.c_offset + (self.batch * self.m - 1) * self.ldc + self.n }
    }
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.n * self.k) as f64
    }
}
