//! Reference for `shaders/matvec_pair.wgsl`: the two products x·Gᵀ and x·Uᵀ of `reference::matmul`,
//! and for SwiGLU (entry `glu`) `reference::silu_mul` of them.

use super::{matmul::matmul, silu_mul::silu_mul};
use crate::ops::{Layout, Matmul};

/// (x·Gᵀ, x·Uᵀ) [rows, n] each, for x [rows, k] and the Linear weights g, u [n, k] (f32 values).
pub fn matvec_pair(x: &[f32], g: &[f32], u: &[f32], rows: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>) {
    let spec = Matmul::new(rows, n, k, Layout::XWt);
    let (mut yg, mut yu) = (vec![0.0; rows * n], vec![0.0; rows * n]);
    matmul(&spec, x, g, None, &mut yg);
    matmul(&spec, x, u, None, &mut yu);
    (yg, yu)
}

/// silu(x·Gᵀ) · (x·Uᵀ) [rows, n]: SwiGLU's gate, up and product.
pub fn matvec_glu(x: &[f32], gate: &[f32], up: &[f32], rows: usize, n: usize, k: usize) -> Vec<f32> {
    let (g, u) = matvec_pair(x, gate, up, rows, n, k);
    silu_mul(&g, &u)
}
