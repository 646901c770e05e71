//! The GPU self-test the web page and `loratab info` run: every op on odd shapes, GPU against the
//! CPU reference. The test suites use the same helpers.

use crate::gpu::{self, GpuContext, GpuError};
use crate::ops::{Layout, Matmul};
use crate::reference;
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub max_error: f32,
    pub tolerance: f32,
    pub passed: bool,
}

/// Largest |gpu − reference|, relative to max(1, |reference|) so large sums are judged fairly.
/// A NaN, an infinity or a length mismatch counts as an infinite error.
pub fn max_error(gpu: &[f32], reference: &[f32]) -> f32 {
    if gpu.len() != reference.len() {
        return f32::INFINITY;
    }
    gpu.iter().zip(reference).fold(0.0f32, |worst, (&g, &r)| {
        let e = (g - r).abs() / r.abs().max(1.0);
        if e.is_finite() { worst.max(e) } else { f32::INFINITY }
    })
}

/// Run `spec` on the GPU; `c` gives C's initial contents (read when beta ≠ 0).
pub async fn gpu_matmul(
    ctx: &GpuContext,
    spec: &Matmul,
    a: &[f32],
    b: &[f32],
    bias: Option<&[f32]>,
    c: &[f32],
) -> Result<Vec<f32>, GpuError> {
    let ta = ctx.upload(a, &[a.len()]).await?;
    let tb = ctx.upload(b, &[b.len()]).await?;
    let tc = ctx.upload(c, &[c.len()]).await?;
    let tbias = match bias {
        Some(v) => Some(ctx.upload(v, &[v.len()]).await?),
        None => None,
    };
    ctx.run(|enc| gpu::matmul::encode(ctx, enc, spec, &ta, &tb, tbias.as_ref(), &tc)).await?;
    ctx.read(&tc).await
}

/// GPU vs reference for one matmul with random operands; returns the max error.
pub async fn check_matmul(ctx: &GpuContext, spec: &Matmul, with_bias: bool, seed: u64) -> Result<f32, GpuError> {
    let mut rng = Rng::new(seed);
    let a = rng.vec(spec.a_len());
    let b = rng.vec(spec.b_len());
    let bias = with_bias.then(|| rng.vec(spec.n));
    let c0 = rng.vec(spec.c_len());
    let got = gpu_matmul(ctx, spec, &a, &b, bias.as_deref(), &c0).await?;
    let mut want = c0;
    reference::matmul::matmul(spec, &a, &b, bias.as_deref(), &mut want);
    Ok(max_error(&got, &want))
}

pub async fn gpu_add(ctx: &GpuContext, a: &[f32], b: &[f32]) -> Result<Vec<f32>, GpuError> {
    let ta = ctx.upload(a, &[a.len()]).await?;
    let tb = ctx.upload(b, &[b.len()]).await?;
    let tc = ctx.zeros(&[a.len()]).await?;
    ctx.run(|enc| gpu::add::encode(ctx, enc, &ta, &tb, &tc)).await?;
    ctx.read(&tc).await
}

pub async fn gpu_scale(ctx: &GpuContext, s: f32, a: &[f32]) -> Result<Vec<f32>, GpuError> {
    let ta = ctx.upload(a, &[a.len()]).await?;
    let tc = ctx.zeros(&[a.len()]).await?;
    ctx.run(|enc| gpu::scale::encode(ctx, enc, s, &ta, &tc)).await?;
    ctx.read(&tc).await
}

pub async fn gpu_sum_squares(ctx: &GpuContext, x: &[f32]) -> Result<f32, GpuError> {
    let tx = ctx.upload(x, &[x.len()]).await?;
    let partials = ctx.zeros(&[gpu::sum_squares::workspace_len(x.len())]).await?;
    let out = ctx.zeros(&[1]).await?;
    ctx.run(|enc| gpu::sum_squares::encode(ctx, enc, &tx, &partials, &out)).await?;
    Ok(ctx.read(&out).await?[0])
}

/// Matmul agrees with the reference to this (relative) error; f32 rounding stays ~1e-6 at these sizes.
pub const MATMUL_TOLERANCE: f32 = 1e-4;

/// The quick self-test: a few odd shapes per op, larger than one tile in every dimension.
pub async fn run(ctx: &GpuContext) -> Result<Vec<Check>, GpuError> {
    let mut checks = Vec::new();
    let mut push = |name: String, max_error: f32, tolerance: f32| {
        checks.push(Check { name, max_error, tolerance, passed: max_error <= tolerance });
    };
    for (layout, label) in [(Layout::XW, "X·W"), (Layout::XWt, "X·Wᵀ"), (Layout::XtG, "Xᵀ·G")] {
        for (m, n, k) in [(7, 33, 130), (130, 65, 33)] {
            let spec = Matmul::new(m, n, k, layout);
            let e = check_matmul(ctx, &spec, layout == Layout::XWt, (m * n * k) as u64).await?;
            push(format!("matmul {label} {m}×{k}·{k}×{n}"), e, MATMUL_TOLERANCE);
        }
    }
    let mut rng = Rng::new(7);
    let (a, b) = (rng.vec(1000), rng.vec(1000));
    push("add ×1000".into(), max_error(&gpu_add(ctx, &a, &b).await?, &reference::add::add(&a, &b)), 0.0);
    push("scale ×1000".into(), max_error(&gpu_scale(ctx, 0.37, &a).await?, &reference::scale::scale(0.37, &a)), 0.0);
    let x = rng.vec(70_001);
    let got = gpu_sum_squares(ctx, &x).await?;
    push("sum of squares ×70001".into(), max_error(&[got], &[reference::sum_squares::sum_squares(&x)]), 1e-5);
    Ok(checks)
}
