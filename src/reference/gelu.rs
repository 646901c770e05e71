//! Reference for `shaders/gelu.wgsl`: GPT-2's tanh approximation,
//! gelu(x) = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).

pub fn gelu_one(x: f32) -> f32 {
    let c = (2.0f32 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

pub fn gelu(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| gelu_one(v)).collect()
}
