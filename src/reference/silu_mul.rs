//! Reference for `shaders/silu_mul.wgsl`: SwiGLU's out = silu(gate) · up, silu(g) = g / (1 + e^−g).

pub fn silu_one(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

pub fn silu_mul(gate: &[f32], up: &[f32]) -> Vec<f32> {
    gate.iter().zip(up).map(|(&g, &u)| silu_one(g) * u).collect()
}

/// The logistic sigmoid σ(g) = 1 / (1 + e^−g), in a form whose exponential never overflows.
pub fn sigmoid_one(g: f32) -> f32 {
    if g >= 0.0 {
        1.0 / (1.0 + (-g).exp())
    } else {
        let e = g.exp();
        e / (1.0 + e)
    }
}

/// Backward of [`silu_mul`]: with σ = σ(gate), silu'(g) = σ·(1 + g·(1 − σ)),
///   dgate = dout · up · silu'(gate),  dup = dout · silu(gate).
/// Returns (dgate, dup).
pub fn silu_mul_backward(gate: &[f32], up: &[f32], dout: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert!(gate.len() == up.len() && gate.len() == dout.len());
    let mut dgate = Vec::with_capacity(gate.len());
    let mut dup = Vec::with_capacity(gate.len());
    for ((&g, &u), &d) in gate.iter().zip(up).zip(dout) {
        let s = sigmoid_one(g);
        dgate.push(d * u * (s * (1.0 + g * (1.0 - s))));
        dup.push(d * (g * s));
    }
    (dgate, dup)
}
