//! Reference for `shaders/matvec_qkv.wgsl`: a layer's three products of `reference::matmul` (x·Wqᵀ,
//! x·Wkᵀ, x·Wvᵀ), then `reference::rope` of q and k, row m at position pos0 + m. (Where k and v land
//! in the cache is the launcher's business; the test checks it.)

use super::{matmul::matmul, rope::rope};
use crate::ops::{Layout, Matmul};

/// The shapes of one call: x [rows, k]; Wq [nq, k]; Wk, Wv [nkv, k]; heads of head_dim.
#[derive(Clone, Copy, Debug)]
pub struct Qkv {
    pub rows: usize,
    pub nq: usize,
    pub nkv: usize,
    pub k: usize,
    pub head_dim: usize,
}

/// (q [rows, nq], k [rows, nkv], v [rows, nkv]): q and k rotated for positions pos0.. (f32 values).
pub fn matvec_qkv(s: Qkv, x: &[f32], wq: &[f32], wk: &[f32], wv: &[f32], pos0: usize, theta: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let product = |w: &[f32], n: usize| {
        let mut y = vec![0.0; s.rows * n];
        matmul(&Matmul::new(s.rows, n, s.k, Layout::XWt), x, w, None, &mut y);
        y
    };
    let (mut q, mut k, v) = (product(wq, s.nq), product(wk, s.nkv), product(wv, s.nkv));
    rope(&mut q, s.nq / s.head_dim, s.head_dim, pos0, theta);
    rope(&mut k, s.nkv / s.head_dim, s.head_dim, pos0, theta);
    (q, k, v)
}
