//! The transformer, written once: [`encode_network`] records embedding → blocks → final norm for
//! both the inference forward ([`GpuModel::hidden`], with a KV cache) and the trainer
//! (`train::Trainer`, which keeps every activation for its backward). A block is
//!
//!   q, k, v = proj(h1);  att = attend(q, k, v);  x_mid = x_in + proj_o(att);  h2 = norm(x_mid)
//!   x_out = x_mid + mlp(h2);  h_out = next_norm(x_out)
//!
//! and what differs between the two callers enters through a [`Pass`]: where each activation lives,
//! how a projection runs (the frozen linear alone, or frozen + LoRA: the one seam an adapter type or a
//! weight format plugs into), and how positions are handled (RoPE offset and KV cache vs batched
//! windows with kept attention probabilities).

use super::{Config, GpuBlock, GpuMlp, GpuModel, GpuNorm};
use crate::gpu::{self, GpuContext, GpuError, GpuTensor, Recorder};
use crate::lora::Site;

/// The tensors one block reads and writes (rows × width each; see the module comment).
pub struct BlockActs<'a> {
    /// Block input [rows, hidden] (the attention norm's input).
    pub x_in: &'a GpuTensor,
    /// attn_norm(x_in): written by the previous block's fused residual + norm (or the first norm);
    /// not written where the attention takes its norm itself ([`Pass::norms_at_attention`]).
    pub h1: &'a GpuTensor,
    pub q: &'a GpuTensor,
    pub k: &'a GpuTensor,
    pub v: &'a GpuTensor,
    /// Attention output [rows, q_dim].
    pub att: &'a GpuTensor,
    /// Output of o and of the MLP's last projection [rows, hidden] (consumed at once by a residual;
    /// a fused decode kernel may leave its output as partial products elsewhere instead, which
    /// [`Pass::self_attention`] and [`Pass::mlp`] return).
    pub proj: &'a GpuTensor,
    pub x_mid: &'a GpuTensor,
    pub h2: &'a GpuTensor,
    /// GPT-2: fc output, gelu output. Llama: gate output, up output, silu(gate)·up. [rows, ffn] each.
    pub ff1: &'a GpuTensor,
    pub ff2: &'a GpuTensor,
    pub ff3: &'a GpuTensor,
    /// x_mid + mlp(h2): the next block's input (may be the same buffer as x_in when nothing is kept).
    pub x_out: &'a GpuTensor,
    /// The next norm's output: the next block's h1, or the final hidden state after the last block.
    pub h_out: &'a GpuTensor,
}

/// An adapter run beside the frozen projections instead of merged into them: what inference does
/// with compact weights, which cannot hold W + s·B·A (and it keeps the base exact for the next call).
pub trait Branch {
    /// The scratch [rows, scratch_cols()] that [`Branch::encode`] gets (the adapter's largest rank).
    fn scratch_cols(&self) -> usize;
    /// y [rows, out] += the adapter's output at `site` of block `l` for x [rows, in], if it adapts
    /// that site. Sites of one fused module are projected in order from the same x, so `u` computed
    /// at the first may be reused by the next.
    #[allow(clippy::too_many_arguments)]
    fn encode(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, site: Site, x: &GpuTensor, rows: usize, u: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError>;
    /// Whether it adapts `site` of block `l` (a fused kernel that skips the projections' seam runs
    /// only where it does not).
    fn adapts(&self, l: usize, site: Site) -> bool;
}

/// What one encoding of the network needs from its caller.
pub trait Pass {
    /// Rows of every row-wise op (tokens of the call, or windows × tokens of a batch).
    fn rows(&self) -> usize;
    /// Token ids and position ids [rows] (u32).
    fn ids(&self) -> (&GpuTensor, &GpuTensor);
    /// The embedding's output, block 0's input.
    fn embedded(&self) -> &GpuTensor;
    /// The final norm's output [rows, hidden].
    fn hidden(&self) -> &GpuTensor;
    /// Where block `l` keeps its activations.
    fn acts(&self, l: usize) -> BlockActs<'_>;
    /// y = the projection at `site` of block `l` applied to x. The frozen linear alone by default; the
    /// trainer adds its adapter's branch here.
    #[allow(clippy::too_many_arguments)]
    fn project(&self, ctx: &GpuContext, enc: &mut Recorder, _l: usize, block: &GpuBlock, site: Site, x: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError> {
        site.linear(block).expect("the block has this site").encode(ctx, enc, x, self.rows(), y)
    }
    /// k = proj_k(x) and v = proj_v(x), in that order (a fused module's parts share the adapter's u).
    #[allow(clippy::too_many_arguments)]
    fn project_kv(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, x: &GpuTensor, k: &GpuTensor, v: &GpuTensor) -> Result<(), GpuError> {
        kv_parts(self, ctx, enc, l, block, x, k, v)
    }
    /// SwiGLU: ff3 = silu(proj_gate(h2)) · proj_up(h2). By default [`swiglu_parts`]: the two
    /// projections (into ff1 and ff2, which the trainer keeps) and silu_mul.
    fn swiglu(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, a: &BlockActs) -> Result<(), GpuError> {
        swiglu_parts(self, ctx, enc, l, block, a)
    }
    /// Positions and attention: rotate q and k (Llama's RoPE) and write att from q, k, v.
    fn attend(&self, ctx: &GpuContext, enc: &mut Recorder, config: &Config, l: usize, a: &BlockActs) -> Result<(), GpuError>;
    /// The MLP half after the attention's output projection (`attn`: its tensor and partial
    /// products, as [`Pass::self_attention`] returns them): the residual x_mid = x_in + Σ attn, its
    /// norm and the MLP. Returns the tensor holding the MLP's output and in how many partial
    /// products ([parts, rows, hidden], summed by the next residual). By default [`mlp_parts`]:
    /// (proj, 1).
    #[allow(clippy::too_many_arguments)]
    fn mlp<'s>(&'s self, ctx: &GpuContext, enc: &mut Recorder, config: &Config, l: usize, block: &GpuBlock, a: &BlockActs<'s>, attn: (&GpuTensor, usize)) -> Result<(&'s GpuTensor, usize), GpuError> {
        mlp_parts(self, ctx, enc, config, l, block, a, attn)
    }
    /// Whether block `l`'s [`Pass::self_attention`] takes its input norm itself, from the residual
    /// stream (the embedding for l = 0, else block l − 1's x_mid and the MLP output still to add):
    /// then the norm before it is not recorded, and the attention writes x_in and its own h1. No by
    /// default.
    fn norms_at_attention(&self, _ctx: &GpuContext, _config: &Config, _l: usize, _block: &GpuBlock) -> bool {
        false
    }
    /// Whether the LM head after this pass takes the final norm itself, from the residual stream
    /// (the last block's x_mid and the MLP output still to add): then [`encode_network`] does not
    /// record the final norm, and [`Pass::hidden`] is not written. No by default.
    fn norms_at_head(&self, _ctx: &GpuContext, _model: &GpuModel) -> bool {
        false
    }
    /// The attention half: q, k, v from h1, [`Pass::attend`], and the output projection o of att.
    /// Returns the tensor holding o's output and in how many partial products ([parts, rows,
    /// hidden], added by the MLP's residual). By default [`attention_parts`], then o through the
    /// projections' seam: (proj, 1). A pass may fuse the projections with what `attend` does.
    fn self_attention<'s>(&'s self, ctx: &GpuContext, enc: &mut Recorder, config: &Config, l: usize, block: &GpuBlock, a: &BlockActs<'s>) -> Result<(&'s GpuTensor, usize), GpuError> {
        attention_o_parts(self, ctx, enc, config, l, block, a)
    }
}

/// Record the whole network up to the final norm: the one forward of loratab.
pub fn encode_network(ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, pass: &impl Pass) -> Result<(), GpuError> {
    let c = &model.config;
    let (rows, d) = (pass.rows(), c.hidden_size);
    let (ids, positions) = pass.ids();
    let x0 = pass.embedded();
    // x = token embedding (+ learned position embedding). Each part writes only its own ids' rows,
    // so together they overwrite every row.
    for (row0, part) in &model.token_embedding.parts {
        gpu::embedding::encode(ctx, enc, part, d, *row0, ids, x0, false)?;
    }
    if let Some(pos) = &model.position_embedding {
        gpu::embedding::encode(ctx, enc, pos, d, 0, positions, x0, true)?;
    }
    // Later norms are fused into the residual add before them (residual_norm), or into the
    // attention or the LM head that reads them (Pass::norms_at_attention, Pass::norms_at_head).
    let normed_at = |l: usize| match model.blocks.get(l) {
        Some(b) => pass.norms_at_attention(ctx, c, l, b),
        None => pass.norms_at_head(ctx, model),
    };
    match model.blocks.first() {
        Some(_) if normed_at(0) => {}
        Some(b) => b.attn_norm.encode(ctx, enc, c, x0, rows, pass.acts(0).h1)?,
        None => model.final_norm.encode(ctx, enc, c, x0, rows, pass.hidden())?,
    }
    for (l, block) in model.blocks.iter().enumerate() {
        let next_norm = model.blocks.get(l + 1).map_or(&model.final_norm, |nb| &nb.attn_norm);
        encode_block(ctx, enc, c, l, block, (!normed_at(l + 1)).then_some(next_norm), pass)?;
    }
    Ok(())
}

/// One block (see the module comment), ending with the norm that reads its output (`next_norm`;
/// None when the next block's attention takes it). Also run alone by the trainer's gradient
/// checkpointing, to recompute a block's activations from its input.
pub(crate) fn encode_block(ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, next_norm: Option<&GpuNorm>, pass: &impl Pass) -> Result<(), GpuError> {
    let a = pass.acts(l);
    let rows = pass.rows();
    let attn = pass.self_attention(ctx, enc, c, l, b, &a)?;
    let (mlp_out, parts) = pass.mlp(ctx, enc, c, l, b, &a, attn)?;
    match next_norm {
        Some(norm) => norm.encode_residual_parts(ctx, enc, c, a.x_mid, mlp_out, parts, a.x_out, rows, a.h_out),
        None => Ok(()),
    }
}

/// The MLP half: x_mid = x_in + Σ attn (o's output in its partial products), h2 = mlp_norm(x_mid),
/// then the MLP's projections from h2 into proj. Returns (proj, 1): where the output is, in how many
/// partial products.
#[allow(clippy::too_many_arguments)]
pub(crate) fn mlp_parts<'s>(pass: &(impl Pass + ?Sized), ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs<'s>, attn: (&GpuTensor, usize)) -> Result<(&'s GpuTensor, usize), GpuError> {
    b.mlp_norm.encode_residual_parts(ctx, enc, c, a.x_in, attn.0, attn.1, a.x_mid, pass.rows(), a.h2)?;
    match &b.mlp {
        GpuMlp::Gelu { .. } => {
            pass.project(ctx, enc, l, b, Site::Fc, a.h2, a.ff1)?;
            gpu::gelu::encode(ctx, enc, a.ff1, a.ff2)?;
            pass.project(ctx, enc, l, b, Site::Proj, a.ff2, a.proj)?;
        }
        GpuMlp::SwiGlu { .. } => {
            pass.swiglu(ctx, enc, l, b, a)?;
            pass.project(ctx, enc, l, b, Site::Down, a.ff3, a.proj)?;
        }
    }
    Ok((a.proj, 1))
}

/// q, k and v through the projections' seam (k and v by [`Pass::project_kv`]), then [`Pass::attend`].
pub(crate) fn attention_parts(pass: &(impl Pass + ?Sized), ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs) -> Result<(), GpuError> {
    pass.project(ctx, enc, l, b, Site::Q, a.h1, a.q)?;
    pass.project_kv(ctx, enc, l, b, a.h1, a.k, a.v)?;
    pass.attend(ctx, enc, c, l, a)
}

/// [`attention_parts`], then o through the projections' seam: returns (proj, 1).
pub(crate) fn attention_o_parts<'s>(pass: &(impl Pass + ?Sized), ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs<'s>) -> Result<(&'s GpuTensor, usize), GpuError> {
    attention_parts(pass, ctx, enc, c, l, b, a)?;
    pass.project(ctx, enc, l, b, Site::O, a.att, a.proj)?;
    Ok((a.proj, 1))
}

/// k and v through the projections' seam, k first.
#[allow(clippy::too_many_arguments)]
pub(crate) fn kv_parts(pass: &(impl Pass + ?Sized), ctx: &GpuContext, enc: &mut Recorder, l: usize, b: &GpuBlock, x: &GpuTensor, k: &GpuTensor, v: &GpuTensor) -> Result<(), GpuError> {
    pass.project(ctx, enc, l, b, Site::K, x, k)?;
    pass.project(ctx, enc, l, b, Site::V, x, v)
}

/// SwiGLU through the projections' seam: gate(h2) → ff1, up(h2) → ff2, silu(ff1) · ff2 → ff3.
pub(crate) fn swiglu_parts(pass: &(impl Pass + ?Sized), ctx: &GpuContext, enc: &mut Recorder, l: usize, b: &GpuBlock, a: &BlockActs) -> Result<(), GpuError> {
    pass.project(ctx, enc, l, b, Site::Gate, a.h2, a.ff1)?;
    pass.project(ctx, enc, l, b, Site::Up, a.h2, a.ff2)?;
    gpu::silu_mul::encode(ctx, enc, a.ff1, a.ff2, a.ff3)
}
