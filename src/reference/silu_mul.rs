//! Reference for `shaders/silu_mul.wgsl`: SwiGLU's out = silu(gate) · up, silu(g) = g / (1 + e^−g).

pub fn silu_one(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| silu_one(g) * u).collect()
}
