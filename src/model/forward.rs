//! The frozen model on the GPU: [`GpuModel`] holds the weights in GPU buffers and a KV cache, and
//! every read of a frozen weight (a linear's forward and input gradient, the LM head and its
//! backward) is here. `forward` runs the one network of `block.rs` over new tokens with the KV
//! cache ([`CachedPass`]), then the LM head.

use super::block::{self, BlockActs, Branch, Pass};
use super::*;
use crate::gpu::{self, GpuContext, GpuTensor, Recorder};
use crate::ops::{Layout, Matmul};
use crate::lora::Site;
use crate::reference::attention::Heads;

/// A [rows, cols] matrix kept as consecutive row blocks, each within the GPU's binding limit
/// (GPT-2's 147 MiB token embedding does not fit a 128 MiB binding in one piece).
pub struct RowParts {
    /// (first row, rows) per block.
    pub parts: Vec<(usize, GpuTensor)>,
    pub rows: usize,
    pub cols: usize,
}

impl RowParts {
    /// Upload `w` in its own format, cut into row blocks that each fit one binding.
    async fn upload(ctx: &GpuContext, w: &Weight) -> Result<Self, ModelError> {
        let (rows, cols) = (w.shape[0], w.shape[1]);
        let mut parts = Vec::new();
        for (row0, n) in Self::blocks(w, ctx.max_binding()) {
            let part = if n == rows { ctx.upload_weight(w).await? } else { ctx.upload_weight(&w.slice_rows(row0, n)).await? };
            parts.push((row0, part));
        }
        Ok(Self { parts, rows, cols })
    }

    /// (first row, rows) of each block `upload` cuts `w` into under a binding limit of
    /// `max_binding` bytes (also what the memory budget counts, so the two cannot drift apart).
    pub fn blocks(w: &Weight, max_binding: u64) -> Vec<(usize, usize)> {
        let rows = w.shape[0];
        let row_bytes = w.format.bytes(w.cols()).max(1);
        let per_part = (max_binding / row_bytes).max(1) as usize;
        (0..rows).step_by(per_part).map(|row0| (row0, per_part.min(rows - row0))).collect()
    }

    /// GPU bytes of all parts.
    pub fn bytes(&self) -> u64 {
        self.parts.iter().map(|(_, p)| p.bytes()).sum()
    }
}

pub struct GpuLinear {
    /// OutIn weights are split by output rows when large; InOut (Conv1D) weights are one part.
    pub weight: RowParts,
    pub bias: Option<GpuTensor>,
    pub in_dim: usize,
    pub out_dim: usize,
    pub layout: WeightLayout,
}

impl GpuLinear {
    async fn upload(ctx: &GpuContext, l: &Linear) -> Result<Self, ModelError> {
        let weight = RowParts::upload(ctx, &l.weight).await?;
        if l.layout == WeightLayout::InOut && weight.parts.len() > 1 {
            return Err(GpuError::TooLarge {
                what: "a Conv1D weight".into(),
                bytes: l.weight.bytes(),
                limit: ctx.max_binding(),
            }
            .into());
        }
        let bias = match &l.bias {
            Some(b) => Some(ctx.upload(&b.data, &b.shape).await?),
            None => None,
        };
        Ok(Self { weight, bias, in_dim: l.in_dim, out_dim: l.out_dim, layout: l.layout })
    }

    /// y [rows, out] = x [rows, in] · W (+ b); a weight split by output rows writes its column blocks.
    pub(crate) fn encode(&self, ctx: &GpuContext, enc: &mut Recorder, x: &GpuTensor, rows: usize, y: &GpuTensor) -> Result<(), GpuError> {
        for (row0, part) in &self.weight.parts {
            let spec = match self.layout {
                WeightLayout::InOut => Matmul::new(rows, self.out_dim, self.in_dim, Layout::XW),
                WeightLayout::OutIn => Matmul::new(rows, part.shape[0], self.in_dim, Layout::XWt),
            }
            .into_block(self.out_dim, 0, *row0);
            gpu::matmul::encode(ctx, enc, &spec, x, part, self.bias.as_ref(), y)?;
        }
        Ok(())
    }

    /// dx [rows, in] = beta·dx + dy·(∂y/∂x): dy·W for W [out, in], dy·Wᵀ for Conv1D's W [in, out]
    /// (the backward's read of a frozen weight; no gradient for W itself).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn encode_input_grad(&self, ctx: &GpuContext, enc: &mut Recorder, dy: &GpuTensor, rows: usize, dx: &GpuTensor, beta: f32) -> Result<(), GpuError> {
        let [(_, w)] = self.weight.parts.as_slice() else {
            return Err(GpuError::Shape { op: "linear backward", detail: "a weight split in several buffers has no backward yet".into() });
        };
        let layout = match self.layout {
            WeightLayout::OutIn => Layout::XW,
            WeightLayout::InOut => Layout::XWt,
        };
        let spec = Matmul::new(rows, self.in_dim, self.out_dim, layout).scaled(1.0, beta);
        gpu::matmul::encode(ctx, enc, &spec, dy, w, None, dx)
    }
}

/// A layernorm (with bias: GPT-2) or an RMSNorm (without: Llama) on the GPU.
pub struct GpuNorm {
    pub weight: GpuTensor,
    pub bias: Option<GpuTensor>,
}

impl GpuNorm {
    /// Record `out = norm(x)` over `rows` rows of the hidden size.
    pub fn encode(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, x: &GpuTensor, rows: usize, out: &GpuTensor) -> Result<(), GpuError> {
        let (d, eps) = (c.hidden_size, c.norm_eps);
        match &self.bias {
            Some(b) => gpu::layernorm::encode(ctx, enc, x, &self.weight, b, out, rows, d, eps),
            None => gpu::rmsnorm::encode(ctx, enc, x, &self.weight, out, rows, d, eps),
        }
    }

    /// Record `s = a + b; out = norm(s)`: a residual add fused with the norm after it.
    #[allow(clippy::too_many_arguments)]
    pub fn encode_residual(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, a: &GpuTensor, b: &GpuTensor, s: &GpuTensor, rows: usize, out: &GpuTensor) -> Result<(), GpuError> {
        self.encode_residual_parts(ctx, enc, c, a, b, 1, s, rows, out)
    }

    /// [`GpuNorm::encode_residual`] with b the sum of `parts` partial products [parts, rows, hidden].
    #[allow(clippy::too_many_arguments)]
    pub fn encode_residual_parts(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, a: &GpuTensor, b: &GpuTensor, parts: usize, s: &GpuTensor, rows: usize, out: &GpuTensor) -> Result<(), GpuError> {
        gpu::residual_norm::encode_parts(ctx, enc, a, b, parts, &self.weight, self.bias.as_ref(), s, out, rows, c.hidden_size, c.norm_eps)
    }

    /// Record `dx = dy · ∂norm(x)/∂x` (weight and bias are frozen: no gradient for them).
    #[allow(clippy::too_many_arguments)]
    pub fn encode_backward(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, x: &GpuTensor, dy: &GpuTensor, rows: usize, dx: &GpuTensor) -> Result<(), GpuError> {
        let (d, eps) = (c.hidden_size, c.norm_eps);
        match &self.bias {
            Some(_) => gpu::layernorm::encode_backward(ctx, enc, x, &self.weight, dy, dx, rows, d, eps),
            None => gpu::rmsnorm::encode_backward(ctx, enc, x, &self.weight, dy, dx, rows, d, eps),
        }
    }
}

pub enum GpuMlp {
    Gelu { fc: GpuLinear, proj: GpuLinear },
    SwiGlu { gate: GpuLinear, up: GpuLinear, down: GpuLinear },
}

pub struct GpuBlock {
    pub attn_norm: GpuNorm,
    pub q: GpuLinear,
    pub k: GpuLinear,
    pub v: GpuLinear,
    pub o: GpuLinear,
    pub mlp_norm: GpuNorm,
    pub mlp: GpuMlp,
}

/// Keys and values of every position seen so far, per block: [max_positions, kv_dim] each.
pub(super) type KvCache = Vec<(GpuTensor, GpuTensor)>;

pub struct GpuModel {
    pub config: Config,
    pub token_embedding: RowParts,
    pub position_embedding: Option<GpuTensor>,
    pub blocks: Vec<GpuBlock>,
    pub final_norm: GpuNorm,
    /// None: tied to the token embedding.
    pub lm_head: Option<GpuLinear>,
    /// Allocated by the first `hidden` call: training never needs it, so it is not part of the
    /// training memory budget.
    kv_cache: std::sync::Mutex<Option<KvCache>>,
    /// Generation's buffers, kept between steps: one-row steps', the last prompt's (see `decode.rs`).
    pub(super) decode: std::sync::Mutex<[Option<super::decode::DecodeState>; 2]>,
}

async fn upload_norm(ctx: &GpuContext, n: &Norm) -> Result<GpuNorm, ModelError> {
    Ok(GpuNorm {
        weight: ctx.upload(&n.weight.data, &n.weight.shape).await?,
        bias: match &n.bias {
            Some(b) => Some(ctx.upload(&b.data, &b.shape).await?),
            None => None,
        },
    })
}

impl GpuModel {
    /// Copy the frozen weights to the GPU (the KV cache comes with the first forward).
    pub async fn upload(ctx: &GpuContext, model: &Model) -> Result<Self, ModelError> {
        let c = &model.config;
        let mut blocks = Vec::new();
        for b in &model.blocks {
            blocks.push(GpuBlock {
                attn_norm: upload_norm(ctx, &b.attn_norm).await?,
                q: GpuLinear::upload(ctx, &b.q).await?,
                k: GpuLinear::upload(ctx, &b.k).await?,
                v: GpuLinear::upload(ctx, &b.v).await?,
                o: GpuLinear::upload(ctx, &b.o).await?,
                mlp_norm: upload_norm(ctx, &b.mlp_norm).await?,
                mlp: match &b.mlp {
                    Mlp::Gelu { fc, proj } => GpuMlp::Gelu {
                        fc: GpuLinear::upload(ctx, fc).await?,
                        proj: GpuLinear::upload(ctx, proj).await?,
                    },
                    Mlp::SwiGlu { gate, up, down } => GpuMlp::SwiGlu {
                        gate: GpuLinear::upload(ctx, gate).await?,
                        up: GpuLinear::upload(ctx, up).await?,
                        down: GpuLinear::upload(ctx, down).await?,
                    },
                },
            });
        }
        Ok(Self {
            config: c.clone(),
            token_embedding: RowParts::upload(ctx, &model.token_embedding).await?,
            position_embedding: match &model.position_embedding {
                Some(p) => Some(ctx.upload(&p.data, &p.shape).await?),
                None => None,
            },
            blocks,
            final_norm: upload_norm(ctx, &model.final_norm).await?,
            lm_head: match &model.lm_head {
                Some(h) => Some(GpuLinear::upload(ctx, h).await?),
                None => None,
            },
            kv_cache: Default::default(),
            decode: Default::default(),
        })
    }

    /// GPU bytes of the frozen weights (the buffers `upload` made; not the KV cache): what the
    /// training budget counts for a model already on the GPU.
    pub fn weight_bytes(&self) -> u64 {
        let size = |t: &GpuTensor| t.buffer.size();
        let opt = |t: &Option<GpuTensor>| t.as_ref().map_or(0, size);
        let parts = |p: &RowParts| p.parts.iter().map(|(_, t)| size(t)).sum::<u64>();
        let linear = |l: &GpuLinear| parts(&l.weight) + opt(&l.bias);
        let norm = |n: &GpuNorm| size(&n.weight) + opt(&n.bias);
        let mut total = parts(&self.token_embedding) + opt(&self.position_embedding) + norm(&self.final_norm);
        total += self.lm_head.as_ref().map_or(0, linear);
        for b in &self.blocks {
            let mlp = match &b.mlp {
                GpuMlp::Gelu { fc, proj } => linear(fc) + linear(proj),
                GpuMlp::SwiGlu { gate, up, down } => linear(gate) + linear(up) + linear(down),
            };
            total += norm(&b.attn_norm) + norm(&b.mlp_norm) + linear(&b.q) + linear(&b.k) + linear(&b.v) + linear(&b.o) + mlp;
        }
        total
    }

    /// The KV cache (handles to the same buffers), allocated on first use.
    pub(super) async fn kv_cache(&self, ctx: &GpuContext) -> Result<KvCache, GpuError> {
        if let Some(cache) = self.kv_cache.lock().unwrap().as_ref() {
            return Ok(cache.clone());
        }
        let shape = [self.config.max_positions, self.config.kv_dim()];
        let mut cache = Vec::new();
        for _ in &self.blocks {
            cache.push((ctx.zeros(&shape).await?, ctx.zeros(&shape).await?));
        }
        *self.kv_cache.lock().unwrap() = Some(cache.clone());
        Ok(cache)
    }

    /// `ModelError` unless `tokens` (at least one, each in the vocabulary) fit after `past` positions.
    pub(super) fn check_tokens(&self, tokens: &[u32], past: usize) -> Result<(), ModelError> {
        let c = &self.config;
        if tokens.is_empty() {
            return Err(ModelError::EmptyText);
        }
        if past + tokens.len() > c.max_positions {
            return Err(ModelError::TooLong { tokens: past + tokens.len(), max: c.max_positions });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= c.vocab_size) {
            return Err(ModelError::TokenOutOfRange { id, vocab: c.vocab_size });
        }
        Ok(())
    }

    /// Final hidden states [tokens, hidden] (after the last norm) for `tokens` at positions
    /// past..past+len, attending to the `past` positions already in the KV cache (0 starts anew).
    pub async fn hidden(&self, ctx: &GpuContext, tokens: &[u32], past: usize) -> Result<GpuTensor, ModelError> {
        self.hidden_with(ctx, tokens, past, None).await
    }

    /// [`GpuModel::hidden`] with an adapter run beside the frozen projections.
    pub async fn hidden_with(&self, ctx: &GpuContext, tokens: &[u32], past: usize, branch: Option<&dyn Branch>) -> Result<GpuTensor, ModelError> {
        self.check_tokens(tokens, past)?;
        let t = tokens.len();
        let branch = match branch {
            Some(b) => Some((b, ctx.zeros(&[t, b.scratch_cols()]).await?)),
            None => None,
        };
        let acts = Acts::new(ctx, &self.config, t).await?;
        ctx.queue.write_buffer(&acts.ids.buffer, 0, bytemuck::cast_slice(tokens));
        ctx.queue.write_buffer(&acts.pos_ids.buffer, 0, bytemuck::cast_slice(&positions(past, t)));
        let pass = CachedPass { branch, past, blocks: &self.blocks, cache: self.kv_cache(ctx).await?, acts, head_norm: false };
        ctx.run(|enc| block::encode_network(ctx, enc, self, &pass)).await?;
        Ok(pass.acts.out)
    }

    /// Record logits [rows, vocab] = LM head of `h` [rows, hidden].
    pub(crate) fn encode_logits(&self, ctx: &GpuContext, enc: &mut Recorder, h: &GpuTensor, rows: usize, logits: &GpuTensor) -> Result<(), GpuError> {
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        match &self.lm_head {
            Some(head) => head.encode(ctx, enc, h, rows, logits),
            // Tied: logits = h · Eᵀ, one column block per embedding part.
            None => {
                for (row0, part) in &self.token_embedding.parts {
                    let spec = Matmul::new(rows, part.shape[0], d, Layout::XWt).into_block(v, 0, *row0);
                    gpu::matmul::encode(ctx, enc, &spec, h, part, None, logits)?;
                }
                Ok(())
            }
        }
    }

    /// Record dh [rows, hidden] = dlogits · ∂logits/∂h (input gradient only), summed over the
    /// head's row blocks (a vocabulary split across buffers: each part reads its own columns).
    pub(crate) fn encode_logits_backward(&self, ctx: &GpuContext, enc: &mut Recorder, dlogits: &GpuTensor, rows: usize, dh: &GpuTensor) -> Result<(), GpuError> {
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        match &self.lm_head {
            Some(head) if head.layout == WeightLayout::InOut => head.encode_input_grad(ctx, enc, dlogits, rows, dh, 0.0),
            head => {
                let parts = head.as_ref().map_or(&self.token_embedding.parts, |h| &h.weight.parts);
                for (i, (row0, part)) in parts.iter().enumerate() {
                    let spec = Matmul::new(rows, d, part.shape[0], Layout::XW).from_block(v, *row0).scaled(1.0, if i == 0 { 0.0 } else { 1.0 });
                    gpu::matmul::encode(ctx, enc, &spec, dlogits, part, None, dh)?;
                }
                Ok(())
            }
        }
    }

    /// Logits for rows row0..row0+rows of the hidden states `h`.
    pub async fn logits(&self, ctx: &GpuContext, h: &GpuTensor, row0: usize, rows: usize) -> Result<GpuTensor, ModelError> {
        let d = self.config.hidden_size;
        let part = ctx.zeros(&[rows, d]).await?;
        let logits = ctx.zeros(&[rows, self.config.vocab_size]).await?;
        ctx.run(|enc| {
            enc.copy_buffer_to_buffer(&h.buffer, (row0 * d * 4) as u64, &part.buffer, 0, (rows * d * 4) as u64);
            self.encode_logits(ctx, enc, &part, rows, &logits)
        })
        .await?;
        Ok(logits)
    }

    /// Logits [tokens, vocab] for `tokens` after `past` cached positions.
    pub async fn forward(&self, ctx: &GpuContext, tokens: &[u32], past: usize) -> Result<GpuTensor, ModelError> {
        let h = self.hidden(ctx, tokens, past).await?;
        self.logits(ctx, &h, 0, tokens.len()).await
    }

    /// Logits of the last token only [vocab] (all that sampling needs), with `branch` beside the
    /// frozen projections when given.
    pub async fn last_logits(&self, ctx: &GpuContext, tokens: &[u32], past: usize, branch: Option<&dyn Branch>) -> Result<Vec<f32>, ModelError> {
        let h = self.hidden_with(ctx, tokens, past, branch).await?;
        Ok(ctx.read(&self.logits(ctx, &h, tokens.len() - 1, 1).await?).await?)
    }

    /// Sum of next-token cross-entropies over `tokens` (a fresh sequence) and the number of predictions.
    /// Logits are made a block of rows at a time so [tokens, vocab] never has to fit one buffer
    /// (1024 × 50257 floats is 196 MiB, over many GPUs' binding limit).
    pub async fn loss_sum(&self, ctx: &GpuContext, tokens: &[u32]) -> Result<(f64, usize), ModelError> {
        if tokens.len() < 2 {
            return Err(ModelError::EmptyText);
        }
        let n = tokens.len() - 1;
        let v = self.config.vocab_size;
        let h = self.hidden(ctx, tokens, 0).await?;
        let block = ((ctx.max_binding() / 4) as usize / v).clamp(1, n);
        let mut sum = 0.0;
        for row0 in (0..n).step_by(block) {
            let rows = block.min(n - row0);
            let logits = self.logits(ctx, &h, row0, rows).await?;
            let targets = ctx.upload_u32(&tokens[row0 + 1..row0 + 1 + rows], &[rows]).await?;
            let losses = ctx.zeros(&[rows]).await?;
            ctx.run(|enc| gpu::cross_entropy::encode(ctx, enc, &logits, &targets, &losses, rows, v)).await?;
            sum += ctx.read(&losses).await?.iter().map(|&l| l as f64).sum::<f64>();
        }
        Ok((sum, n))
    }
}

pub(crate) fn heads(c: &Config) -> Heads {
    Heads { q_heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim }
}

/// Positions past..past + rows (RoPE's and the position embedding's ids).
pub(super) fn positions(past: usize, rows: usize) -> Vec<u32> {
    (past as u32..(past + rows) as u32).collect()
}

/// The inference forward's activations for `rows` tokens, shared by every block (the residual
/// stream alternates between `x` and `x2`); `ids` and `pos_ids` are written before each run.
/// Generation keeps one set per row count (`decode.rs`), so a step allocates nothing.
#[derive(Clone)]
pub(super) struct Acts {
    pub rows: usize,
    pub ids: GpuTensor,
    pub pos_ids: GpuTensor,
    pub x: GpuTensor,
    pub x2: GpuTensor,
    pub h: GpuTensor,
    pub q: GpuTensor,
    pub k: GpuTensor,
    pub v: GpuTensor,
    pub att: GpuTensor,
    /// Attention's row logsumexp [Hq, rows] (inference does not read it; the kernel writes it for
    /// training's backward).
    pub lse: GpuTensor,
    pub proj: GpuTensor,
    /// A decode step's MLP output as `gpu::matvec_pair::encode_mlp` leaves it: [parts, rows, hidden]
    /// (a placeholder where the model is not Llama or rows are too many for it).
    pub parts: GpuTensor,
    /// A decode step's o output as `gpu::attention::encode_o` leaves it: [kv heads, rows, hidden]
    /// (a placeholder as for `parts`).
    pub parts_o: GpuTensor,
    pub ff1: GpuTensor,
    pub ff2: GpuTensor,
    pub ff3: GpuTensor,
    pub out: GpuTensor,
}

impl Acts {
    pub async fn new(ctx: &GpuContext, c: &Config, t: usize) -> Result<Self, GpuError> {
        let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        // Only a Llama decode step can take the fused MLP and attention + o (their partial products).
        let fused = c.arch == Arch::Llama && t <= gpu::matvec_pair::MAX_ROWS;
        Ok(Self {
            rows: t,
            ids: ctx.zeros(&[t]).await?,
            pos_ids: ctx.zeros(&[t]).await?,
            x: ctx.zeros(&[t, d]).await?,
            x2: ctx.zeros(&[t, d]).await?,
            h: ctx.zeros(&[t, d]).await?,
            q: ctx.zeros(&[t, qd]).await?,
            k: ctx.zeros(&[t, kvd]).await?,
            v: ctx.zeros(&[t, kvd]).await?,
            att: ctx.zeros(&[t, qd]).await?,
            lse: ctx.zeros(&[gpu::attention::lse_len(t, &heads(c))]).await?,
            proj: ctx.zeros(&[t, d]).await?,
            parts: ctx.zeros(&if fused { vec![gpu::matvec_pair::mlp_parts(f) * t, d] } else { vec![1] }).await?,
            parts_o: ctx.zeros(&if fused { vec![c.num_kv_heads * t, d] } else { vec![1] }).await?,
            ff1: ctx.zeros(&[t, f]).await?,
            ff2: ctx.zeros(&[t, f]).await?,
            ff3: ctx.zeros(&[t, f]).await?,
            out: ctx.zeros(&[t, d]).await?,
        })
    }
}

/// The inference forward's [`Pass`] over [`Acts`]: RoPE from position `past`, k and v appended to
/// the KV cache and attended over with everything cached before them.
pub(super) struct CachedPass<'a> {
    /// An adapter beside the frozen projections, and its scratch [rows, rank].
    pub branch: Option<(&'a dyn Branch, GpuTensor)>,
    pub past: usize,
    /// The model's blocks (a fused decode kernel of one block depends on how the one before ran).
    pub blocks: &'a [GpuBlock],
    pub cache: KvCache,
    pub acts: Acts,
    /// Whether the caller records the LM head with the final norm fused in
    /// ([`CachedPass::encode_head`], a decode step) rather than reading the final hidden states.
    pub head_norm: bool,
}

impl CachedPass<'_> {
    /// The weight of `w` (at `site` of block `l`) when a fused decode kernel can read it in place of
    /// the projections' seam: no adapter on the site (it enters through the seam), and the weight
    /// one part, without a bias, laid out [out, in].
    fn plain<'w>(&self, l: usize, w: &'w GpuLinear, site: Site) -> Option<&'w GpuTensor> {
        match &w.weight.parts[..] {
            [(_, t)] if w.bias.is_none() && w.layout == WeightLayout::OutIn && !self.branch.as_ref().is_some_and(|(b, _)| b.adapts(l, site)) => Some(t),
            _ => None,
        }
    }

    /// The two weights, when `gpu::matvec_pair` can run both projections in one dispatch: a CPU
    /// device, where a dispatch costs about what a decode step's small products compute, and both
    /// [`CachedPass::plain`].
    fn pair<'w>(&self, ctx: &GpuContext, l: usize, sites: [(&'w GpuLinear, Site); 2]) -> Option<(&'w GpuTensor, &'w GpuTensor)> {
        let (g, u) = (self.plain(l, sites[0].0, sites[0].1)?, self.plain(l, sites[1].0, sites[1].1)?);
        (ctx.matvec() && gpu::matvec_pair::fits(ctx, self.acts.rows, g, u)).then_some((g, u))
    }

    /// gate, up and down, when `gpu::matvec_pair::encode_mlp` can run block l's MLP in one dispatch
    /// (its residual and RMS norm, SwiGLU and the down product): a CPU device, all three
    /// [`CachedPass::plain`].
    fn mlp_weights<'w>(&self, ctx: &GpuContext, l: usize, b: &'w GpuBlock) -> Option<gpu::matvec_pair::Mlp<'w>> {
        let (GpuMlp::SwiGlu { gate, up, down }, None) = (&b.mlp, &b.mlp_norm.bias) else { return None };
        let w = gpu::matvec_pair::Mlp { gate: self.plain(l, gate, Site::Gate)?, up: self.plain(l, up, Site::Up)?, down: self.plain(l, down, Site::Down)? };
        (ctx.matvec() && gpu::matvec_pair::fits_mlp(ctx, self.acts.rows, &w)).then_some(w)
    }

    /// Where block l's MLP leaves its output and in how many partial products (see `Pass::mlp`).
    fn mlp_output(&self, ctx: &GpuContext, l: usize) -> (&GpuTensor, usize) {
        match self.mlp_weights(ctx, l, &self.blocks[l]) {
            Some(w) => (&self.acts.parts, gpu::matvec_pair::mlp_parts(w.gate.shape[0])),
            None => (&self.acts.proj, 1),
        }
    }

    /// q, k, v, RoPE and the cache writes in one dispatch (`gpu::matvec_qkv`), with the norm before
    /// them where [`Pass::norms_at_attention`] says so.
    #[allow(clippy::too_many_arguments)]
    fn encode_qkv(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs, w: &gpu::matvec_qkv::Weights) -> Result<(), GpuError> {
        let (k_cache, v_cache) = &self.cache[l];
        let out = gpu::matvec_qkv::Outputs { q: a.q, k_cache, v_cache };
        let rows = self.acts.rows;
        if self.norms_at_attention(ctx, c, l, b) {
            // The residual stream: block 0's embedding as it is (S = x_in, stored into the free
            // x_mid), else block l − 1's x_mid plus its MLP output, summed into x_in.
            let x = &self.acts;
            let (input, (add, parts), s) = match l.checked_sub(1) {
                None => (&x.x, (&x.parts, 0), &x.x2),
                Some(prev) => (&x.x2, self.mlp_output(ctx, prev), &x.x),
            };
            let norm = gpu::matvec_pair::Norm { x: input, add, parts, weight: &b.attn_norm.weight, eps: c.norm_eps, s };
            gpu::matvec_qkv::encode_normed(ctx, enc, &norm, rows, w, c.head_dim, self.past, c.rope_theta, &out)
        } else {
            gpu::matvec_qkv::encode(ctx, enc, a.h1, rows, w, c.head_dim, self.past, c.rope_theta, &out)
        }
    }

    /// The LM head's parts (first column, weight [columns, hidden]) when `gpu::matvec_qkv::encode_head`
    /// runs a one-row step's final norm and head: asked for (`head_norm`), a Llama model (RMS
    /// norms) on a CPU device, the head tied or a Linear [vocabulary, hidden] without a bias, every
    /// part taken by the kernel.
    pub(super) fn head_parts<'m>(&self, ctx: &GpuContext, model: &'m GpuModel) -> Option<&'m [(usize, GpuTensor)]> {
        if !self.head_norm || model.config.arch != Arch::Llama || model.final_norm.bias.is_some() || model.blocks.is_empty() || self.acts.rows != 1 || !ctx.matvec() {
            return None;
        }
        let parts = match &model.lm_head {
            None => &model.token_embedding.parts,
            Some(h) if h.bias.is_none() && h.layout == WeightLayout::OutIn => &h.weight.parts,
            Some(_) => return None,
        };
        parts.iter().all(|(_, w)| gpu::matvec_qkv::fits_head(ctx, 1, w)).then_some(&parts[..])
    }

    /// Logits [1, vocab] of a one-row step from the residual stream after the last block (its
    /// x_mid and MLP output still to add; S stored into x_out): the final norm and each part of the
    /// head in one dispatch (`gpu::matvec_qkv::encode_head`), where [`Self::head_parts`] says so.
    pub(super) fn encode_head(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, parts: &[(usize, GpuTensor)], logits: &GpuTensor) -> Result<(), GpuError> {
        let c = &model.config;
        let last = model.blocks.len() - 1;
        let (add, n) = self.mlp_output(ctx, last);
        let a = self.acts(last);
        let norm = gpu::matvec_pair::Norm { x: a.x_mid, add, parts: n, weight: &model.final_norm.weight, eps: c.norm_eps, s: a.x_out };
        for (col0, w) in parts {
            gpu::matvec_qkv::encode_head(ctx, enc, &norm, 1, w, logits, *col0, c.vocab_size)?;
        }
        Ok(())
    }

    /// q, k and v's weights, when `gpu::matvec_qkv` can run the three projections, RoPE and the
    /// cache writes in one dispatch: a Llama block on a CPU device, all three [`CachedPass::plain`].
    fn qkv<'w>(&self, ctx: &GpuContext, c: &Config, l: usize, b: &'w GpuBlock) -> Option<gpu::matvec_qkv::Weights<'w>> {
        if c.arch != Arch::Llama || !ctx.matvec() {
            return None;
        }
        let w = gpu::matvec_qkv::Weights { q: self.plain(l, &b.q, Site::Q)?, k: self.plain(l, &b.k, Site::K)?, v: self.plain(l, &b.v, Site::V)? };
        gpu::matvec_qkv::fits(ctx, self.acts.rows, &w, c.head_dim).then_some(w)
    }
}

impl Pass for CachedPass<'_> {
    fn rows(&self) -> usize {
        self.acts.rows
    }

    fn project(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, site: Site, x: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError> {
        site.linear(block).expect("the block has this site").encode(ctx, enc, x, self.acts.rows, y)?;
        match &self.branch {
            Some((branch, u)) => branch.encode(ctx, enc, l, site, x, self.acts.rows, u, y),
            None => Ok(()),
        }
    }

    /// One dispatch (`gpu::matvec_pair`) for a decode step's k and v on a CPU device (see
    /// [`CachedPass::pair`]), else the two projections.
    fn project_kv(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, x: &GpuTensor, k: &GpuTensor, v: &GpuTensor) -> Result<(), GpuError> {
        match self.pair(ctx, l, [(&block.k, Site::K), (&block.v, Site::V)]) {
            Some((wk, wv)) => gpu::matvec_pair::encode(ctx, enc, x, self.acts.rows, wk, wv, k, v),
            None => block::kv_parts(self, ctx, enc, l, block, x, k, v),
        }
    }

    /// SwiGLU's gate, up and silu_mul in one dispatch (`gpu::matvec_pair`, entry `glu`) for a decode
    /// step on a CPU device (see [`CachedPass::pair`]), else the three.
    fn swiglu(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, a: &BlockActs) -> Result<(), GpuError> {
        if let GpuMlp::SwiGlu { gate, up, .. } = &block.mlp {
            if let Some((g, u)) = self.pair(ctx, l, [(gate, Site::Gate), (up, Site::Up)]) {
                return gpu::matvec_pair::encode_glu(ctx, enc, a.h2, self.acts.rows, g, u, a.ff3);
            }
        }
        block::swiglu_parts(self, ctx, enc, l, block, a)
    }

    /// A decode step's MLP in one dispatch (`gpu::matvec_pair::encode_mlp`: the residual and norm,
    /// SwiGLU and the down product as partial products) on a CPU device, where gate, up and down are
    /// all [`CachedPass::plain`] and the norm is RMS; else the parts.
    fn mlp<'s>(&'s self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs<'s>, attn: (&GpuTensor, usize)) -> Result<(&'s GpuTensor, usize), GpuError> {
        if let Some(w) = self.mlp_weights(ctx, l, b) {
            let norm = gpu::matvec_pair::Norm { x: a.x_in, add: attn.0, parts: attn.1, weight: &b.mlp_norm.weight, eps: c.norm_eps, s: a.x_mid };
            let parts = gpu::matvec_pair::encode_mlp(ctx, enc, self.acts.rows, &norm, &w, &self.acts.parts)?;
            return Ok((&self.acts.parts, parts));
        }
        block::mlp_parts(self, ctx, enc, c, l, b, a, attn)
    }

    /// On a CPU device, block l's q, k, v dispatch (`matvec_qkv`'s `normed`) also takes the norm
    /// before it, where the three weights are plain, the norm is RMS and the rows fit.
    fn norms_at_attention(&self, ctx: &GpuContext, c: &Config, l: usize, b: &GpuBlock) -> bool {
        b.attn_norm.bias.is_none() && self.qkv(ctx, c, l, b).is_some_and(|w| gpu::matvec_qkv::fits_normed(ctx, self.acts.rows, &w, c.head_dim))
    }

    /// On a CPU device, a one-row step's LM head also takes the final norm (see
    /// [`CachedPass::head_parts`]).
    fn norms_at_head(&self, ctx: &GpuContext, model: &GpuModel) -> bool {
        self.head_parts(ctx, model).is_some()
    }

    fn ids(&self) -> (&GpuTensor, &GpuTensor) {
        (&self.acts.ids, &self.acts.pos_ids)
    }

    fn embedded(&self) -> &GpuTensor {
        &self.acts.x
    }

    fn hidden(&self) -> &GpuTensor {
        &self.acts.out
    }

    fn acts(&self, l: usize) -> BlockActs<'_> {
        BlockActs {
            x_in: &self.acts.x,
            h1: &self.acts.h,
            q: &self.acts.q,
            k: &self.acts.k,
            v: &self.acts.v,
            att: &self.acts.att,
            proj: &self.acts.proj,
            x_mid: &self.acts.x2,
            h2: &self.acts.h,
            ff1: &self.acts.ff1,
            ff2: &self.acts.ff2,
            ff3: &self.acts.ff3,
            x_out: &self.acts.x,
            h_out: if l + 1 == self.blocks.len() { &self.acts.out } else { &self.acts.h },
        }
    }

    /// On a CPU device, where q, k and v can run fused ([`CachedPass::qkv`]): one dispatch for a
    /// decode step's q, k, v, RoPE and cache writes (`gpu::matvec_qkv`), then one for attention and
    /// o (`gpu::attention::encode_o`, where o is [`CachedPass::plain`] and the decode attention
    /// fits; o's output is then Hkv partial products in `parts_o`), else attention and o apart.
    /// Elsewhere the parts.
    fn self_attention<'s>(&'s self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, b: &GpuBlock, a: &BlockActs<'s>) -> Result<(&'s GpuTensor, usize), GpuError> {
        let Some(w) = self.qkv(ctx, c, l, b) else {
            return block::attention_o_parts(self, ctx, enc, c, l, b, a);
        };
        self.encode_qkv(ctx, enc, c, l, b, a, &w)?;
        let (k_cache, v_cache) = &self.cache[l];
        let (rows, heads) = (self.acts.rows, heads(c));
        let fused_o = ctx.is_cpu() && rows <= gpu::matvec_pair::MAX_ROWS && gpu::attention::decode_fits(rows, self.past, &heads);
        if let Some(wo) = self.plain(l, &b.o, Site::O).filter(|_| fused_o) {
            let o = gpu::attention::OutProj { wo, proj: &self.acts.parts_o };
            let parts = gpu::attention::encode_o(ctx, enc, [a.q, k_cache, v_cache, a.att, &self.acts.lse], &o, rows, self.past, &heads)?;
            return Ok((&self.acts.parts_o, parts));
        }
        gpu::attention::encode(ctx, enc, a.q, k_cache, v_cache, a.att, &self.acts.lse, rows, self.past, &heads)?;
        self.project(ctx, enc, l, b, Site::O, a.att, a.proj)?;
        Ok((a.proj, 1))
    }

    fn attend(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, a: &BlockActs) -> Result<(), GpuError> {
        let (t, past, kvd) = (self.acts.rows, self.past, c.kv_dim());
        if c.arch == Arch::Llama {
            gpu::rope::encode(ctx, enc, &[(a.q, c.num_heads), (a.k, c.num_kv_heads)], t, c.head_dim, past, c.rope_theta)?;
        }
        let (k_cache, v_cache) = &self.cache[l];
        let row_bytes = (kvd * 4) as u64;
        enc.copy_buffer_to_buffer(&a.k.buffer, 0, &k_cache.buffer, past as u64 * row_bytes, t as u64 * row_bytes);
        enc.copy_buffer_to_buffer(&a.v.buffer, 0, &v_cache.buffer, past as u64 * row_bytes, t as u64 * row_bytes);
        gpu::attention::encode(ctx, enc, a.q, k_cache, v_cache, a.att, &self.acts.lse, t, past, &heads(c))
    }
}
