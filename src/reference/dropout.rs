//! Reference for `shaders/dropout.wgsl`: out = beta·out + mask ⊙ x / (1 − p), with the mask from
//! the same integer hash, so GPU and CPU masks are identical bit for bit.

/// PCG-RXS-M-XS (Jarzynski & Olano 2020), as in the shader.
pub fn pcg(v: u32) -> u32 {
    let state = v.wrapping_mul(747796405).wrapping_add(2891336453);
    let word = ((state >> ((state >> 28) + 4)) ^ state).wrapping_mul(277803737);
    (word >> 22) ^ word
}

/// ⌊p·2³²⌋: hashes at or above it keep their element (probability 1 − p).
pub fn threshold(p: f32) -> u32 {
    ((p as f64) * 4294967296.0).min(u32::MAX as f64) as u32
}

/// Whether element `i` survives dropout `p` under `seed`.
pub fn keep(seed: u32, i: usize, p: f32) -> bool {
    pcg(i as u32 ^ pcg(seed)) >= threshold(p)
}

/// out = beta·out + mask ⊙ x / (1 − p).
pub fn dropout(x: &[f32], p: f32, seed: u32, beta: f32, out: &mut [f32]) {
    let scale = 1.0 / (1.0 - p);
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        let base = if beta != 0.0 { beta * *o } else { 0.0 };
        *o = if keep(seed, i, p) { base + v * scale } else { base };
    }
}
