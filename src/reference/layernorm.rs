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

/// Backward of [`layernorm`] with respect to x (weight and bias are frozen): per row, with mean and
/// rstd = 1/sqrt(var + eps) recomputed from x as the forward does, x̂ = (x − mean)·rstd and
/// g = dy ⊙ weight,
///   dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂)).
pub fn layernorm_backward(x: &[f32], weight: &[f32], dy: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    assert_eq!(x.len(), dy.len());
    let mut dx = vec![0.0; x.len()];
    for ((xr, dyr), dxr) in x.chunks(dim).zip(dy.chunks(dim)).zip(dx.chunks_mut(dim)) {
        let n = dim as f32;
        let mean = xr.iter().sum::<f32>() / n;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let rstd = 1.0 / (var + eps).sqrt();
        let (mut sum_g, mut sum_gx) = (0.0f32, 0.0f32);
        for i in 0..dim {
            let g = dyr[i] * weight[i];
            sum_g += g;
            sum_gx += g * (xr[i] - mean) * rstd;
        }
        let (mean_g, mean_gx) = (sum_g / n, sum_gx / n);
        for i in 0..dim {
            let xhat = (xr[i] - mean) * rstd;
            dxr[i] = rstd * (dyr[i] * weight[i] - mean_g - xhat * mean_gx);
        }
    }
    dx
}
