//! Merging an adapter into the frozen weights on the GPU — W += s·B·A, so inference costs nothing
//! extra — and taking it out again (W −= s·B·A). Both are one matmul per adapted layer, accumulating
//! into W (beta = 1) in the weight's own layout:
//!   Linear [out, in]:  W += s · B [out, r] · A [r, in]        (Layout::XW)
//!   Conv1D [in, out]:  W += s · Aᵀ [in, r] · Bᵀ [r, out]      (Layout::XtWt; GPT-2)
//! GPT-2's fused c_attn adapter merges each of its B row blocks into q, k and v with the shared A.

use super::{GpuLora, TrainError};
use crate::gpu::{self, GpuContext};
use crate::model::{GpuModel, WeightLayout};
use crate::ops::{Layout, Matmul};

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
