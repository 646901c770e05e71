//! Reference for `shaders/layernorm.wgsl`: per row of x [rows, dim],
//! y = (x − mean) / sqrt(var + eps) · weight + bias, with the biased variance (as torch).

pub fn layernorm(x: &[f32], weight: &[f32], bias: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(dim).zip(y.chunks_mut(dim)) {
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        for i in 0..dim {
            yr[i] = (xr[i] - mean) * rstd * weight[i] + bias[i];
        }
    }
    y
}
