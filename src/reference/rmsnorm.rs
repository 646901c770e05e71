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

/// Backward of [`rmsnorm`] with respect to x (weight is frozen): per row, with
/// rstd = 1/sqrt(mean(x²) + eps) recomputed from x and g = dy ⊙ weight,
///   dx = rstd · g − x · rstd³ · mean(g ⊙ x).
pub fn rmsnorm_backward(x: &[f32], weight: &[f32], dy: &[f32], dim: usize, eps: f32) -> Vec<f32> {
    assert_eq!(x.len(), dy.len());
    let mut dx = vec![0.0; x.len()];
    for ((xr, dyr), dxr) in x.chunks(dim).zip(dy.chunks(dim)).zip(dx.chunks_mut(dim)) {
        let n = dim as f32;
        let ms = xr.iter().map(|v| v * v).sum::<f32>() / n;
        let rstd = 1.0 / (ms + eps).sqrt();
        let sum_gx: f32 = (0..dim).map(|i| dyr[i] * weight[i] * xr[i]).sum();
        let c = rstd * rstd * rstd * (sum_gx / n);
        for i in 0..dim {
            dxr[i] = rstd * dyr[i] * weight[i] - xr[i] * c;
        }
    }
    dx
}
