//! Merging an adapter into the frozen weights on the GPU — W += s·B·A, so inference costs nothing
//! extra — and taking it out again (W −= s·B·A). Both are one matmul per adapted layer, accumulating
//! into W (beta = 1) in the weight's own layout:
//!   Linear [out, in]:  W += s · B [out, r] · A [r, in]        (Layout::XW)
//!   Conv1D [in, out]:  W += s · Aᵀ [in, r] · Bᵀ [r, out]      (Layout::XtWt; GPT-2)
//! GPT-2's fused c_attn adapter merges each of its B row blocks into q, k and v with the shared A.
//! A compact weight (f16, Q8_0, Q4_1, …) cannot hold W + s·B·A, so merging into one is refused;
//! inference runs the adapter beside it instead ([`Branch`]: y += s·(x·Aᵀ)·Bᵀ).

use super::{GpuLora, TrainError};
use crate::gpu::{self, GpuContext, GpuError, GpuTensor, Recorder};
use crate::lora::Site;
use crate::model::{Branch, GpuModel, WeightFormat, WeightLayout};
use crate::ops::{Layout, Matmul};

impl Branch for GpuLora {
    fn scratch_cols(&self) -> usize {
        self.modules.iter().map(|m| m.rank).max().unwrap_or(0)
    }

    fn encode(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, site: Site, x: &GpuTensor, rows: usize, u: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError> {
        let Some(&(m, p)) = self.index.get(&(l, site)) else { return Ok(()) };
        let module = &self.modules[m];
        let (r, out) = (module.rank, module.parts[p].1.value.shape[0]);
        if p == 0 {
            // u = x·Aᵀ, shared by the parts of a fused module (they all read the same x).
            gpu::matmul::encode(ctx, enc, &Matmul::new(rows, r, module.in_dim, Layout::XWt), x, &module.a.value, None, u)?;
        }
        // y += s·u·B_pᵀ
        let spec = Matmul::new(rows, out, r, Layout::XWt).scaled(module.scale, 1.0);
        gpu::matmul::encode(ctx, enc, &spec, u, &module.parts[p].1.value, None, y)
    }
}

impl GpuLora {
    /// W += s·B·A for every adapted layer of `model`.
    pub async fn merge_into(&self, ctx: &GpuContext, model: &GpuModel) -> Result<(), TrainError> {
        self.apply(ctx, model, 1.0).await
    }

    /// W −= s·B·A: undo [`GpuLora::merge_into`] (exact up to f32 rounding).
    pub async fn unmerge_from(&self, ctx: &GpuContext, model: &GpuModel) -> Result<(), TrainError> {
        self.apply(ctx, model, -1.0).await
    }

    async fn apply(&self, ctx: &GpuContext, model: &GpuModel, sign: f32) -> Result<(), TrainError> {
        for m in &self.modules {
            for (site, b) in &m.parts {
                let layer = model.blocks.get(m.block).and_then(|blk| site.linear(blk)).ok_or_else(|| {
                    TrainError::Unsupported(format!("merging `{}` into a model without that layer", m.name))
                })?;
                if layer.weight.parts.len() != 1 {
                    return Err(TrainError::Unsupported(format!("merging into the split weight of `{}`", m.name)));
                }
                let w = &layer.weight.parts[0].1;
                if w.format != WeightFormat::F32 {
                    return Err(TrainError::CompactMerge { module: m.name.clone(), format: w.format });
                }
                let (out, r, inp) = (layer.out_dim, m.rank, layer.in_dim);
                let alpha = sign * m.scale;
                ctx.run(|enc| match layer.layout {
                    WeightLayout::OutIn => {
                        let spec = Matmul::new(out, inp, r, Layout::XW).scaled(alpha, 1.0);
                        gpu::matmul::encode(ctx, enc, &spec, &b.value, &m.a.value, None, w)
                    }
                    WeightLayout::InOut => {
                        let spec = Matmul::new(inp, out, r, Layout::XtWt).scaled(alpha, 1.0);
                        gpu::matmul::encode(ctx, enc, &spec, &m.a.value, &b.value, None, w)
                    }
                })
                .await?;
            }
        }
        Ok(())
    }
}
