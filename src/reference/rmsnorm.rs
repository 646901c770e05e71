//! Reference for `shaders/rmsnorm.wgsl`: per row of x [rows, dim],
//! y = x / sqrt(mean(x²) + eps) · weight (Llama's RMSNorm).

pub fn rmsnorm(x: &[f32], weight: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let rstd = 1.0 / (ms + eps).sqrt();
        for i in 0..dim {
            yr[i] = xr[i] * rstd * weight[i];
        }
    }
    y
}
