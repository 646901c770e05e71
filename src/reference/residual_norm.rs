//! Reference for `shaders/residual_norm.wgsl`: s = a + b, then layernorm(s) (with a bias) or
//! rmsnorm(s) (without), exactly the unfused add followed by the norm.

use super::{add::add, layernorm::layernorm, rmsnorm::rmsnorm};

/// (s, y) with s = a + b and y = norm(s) per row of `dim` values.
pub fn residual_norm(a: &[f32], b: &[f32], weight: &[f32], bias: Option<&[f32]>, dim: usize, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let s = add(a, b);
    let y = match bias {
        Some(bias) => layernorm(&s, weight, bias, dim, eps),
        None => rmsnorm(&s, weight, dim, eps),
    };
    (s, y)
}
