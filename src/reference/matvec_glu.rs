//! Reference for `shaders/matvec_glu.wgsl`: SwiGLU's out = silu(x·Gᵀ) · (x·Uᵀ), the two products of
//! `reference::matmul` followed by `reference::silu_mul`.

use super::{matmul::matmul, silu_mul::silu_mul};
use crate::ops::{Layout, Matmul};

/// out [rows, n] for x [rows, k] and the Linear weights gate, up [n, k] (plain f32 values).
pub fn matvec_glu(x: &[f32], gate: &[f32], up: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    let spec = Matmul::new(rows, n, k, Layout::XWt);
    let (mut g, mut u) = (vec![0.0; rows * n], vec![0.0; rows * n]);
    matmul(&spec, x, gate, None, &mut g);
    matmul(&spec, x, up, None, &mut u);
    silu_mul(&g, &u)
}
