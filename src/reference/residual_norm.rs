//! Reference for `shaders/residual_norm.wgsl`: s = a + b, then layernorm(s) (with a bias) or
//! rmsnorm(s) (without), exactly the unfused add followed by the norm.

use super::{add::add, layernorm::layernorm, rmsnorm::rmsnorm};

/// (s, y) with s = a + b and y = norm(s) per row of `dim` values.
pub fn residual_norm(a: &[f32], b: &[f32], weight: &[f32], bias: Option<&[f32]>, dim: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    residual_norm_parts(a, b, 1, weight, bias, dim, eps)
}

/// [`residual_norm`] with b the sum of `parts` partial products [parts, rows · dim], added to a in
/// order: s = ((a + b_0) + b_1) ….
pub fn residual_norm_parts(a: &[f32], b: &[f32], parts: usize, weight: &[f32], bias: Option<&[f32]>, dim: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(b.len(), parts * a.len(), "b holds parts · rows · dim values");
    let s = b.chunks(a.len()).fold(a.to_vec(), |s, part| add(&s, part));
    let y = match bias {
        Some(bias) => layernorm(&s, weight, bias, dim, eps),
        None => rmsnorm(&s, weight, dim, eps),
    };
    (s, y)
}
