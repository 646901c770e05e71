//! Reference for `shaders/gelu.wgsl`: GPT-2's tanh approximation,
//! gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

pub fn gelu_one(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| gelu_one(v)).collect()
}

/// d gelu / dx of the tanh approximation: with u = √(2/π)·(x + 0.044715·x³) and t = tanh u,
///   gelu'(x) = ½·(1 + t) + ½·x·(1 − t)(1 + t)·√(2/π)·(1 + 3·0.044715·x²).
pub fn gelu_grad_one(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    let t = (c * (x + 0.044715 * x * x * x)).tanh();
    0.5 * (1.0 + t) + 0.5 * x * ((1.0 - t) * (1.0 + t)) * c * (1.0 + 3.0 * 0.044715 * x * x)
}

/// Backward of [`gelu`]: dx = dy · gelu'(x).
pub fn gelu_backward(x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert_eq!(x.len(), dy.len());
    x.iter().zip(dy).map(|(&v, &d)| d * gelu_grad_one(v)).collect()
}
