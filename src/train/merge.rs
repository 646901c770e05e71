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
        match self.index.get(&(l, site)) {
            Some(&(m, p)) => self.encode_part(ctx, enc, m, p, x, rows, u, y),
            None => Ok(()),
        }
    }

    fn adapts(&self, l: usize, site: Site) -> bool {
        self.index.contains_key(&(l, site))
    }
}

impl GpuLora {
    /// y [rows, out_p] += s·u·B_pᵀ for part `p` of module `m`, first computing u [rows, r] = x·Aᵀ at
    /// part 0 (the parts of a fused module are projected in order from the same x, so they share
    /// u; x is not read for later parts). The one LoRA branch of the trainer's projection and of
    /// inference beside compact weights.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_part(&self, ctx: &GpuContext, enc: &mut Recorder, m: usize, p: usize, x: &GpuTensor, rows: usize, u: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError> {
        let module = &self.modules[m];
        let (r, b) = (module.rank, &module.parts[p].1.value);
        if p == 0 {
            gpu::matmul::encode(ctx, enc, &Matmul::new(rows, r, module.in_dim, Layout::XWt), x, &module.a.value, None, u)?;
        }
        let spec = Matmul::new(rows, b.shape[0], r, Layout::XWt).scaled(module.scale, 1.0);
        gpu::matmul::encode(ctx, enc, &spec, u, b, None, y)
    }

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
