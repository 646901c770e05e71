//! [`Trainer`]: the activations of one batch shape and the encoding of a LoRA training step.
//!
//! Rows: a batch of B windows of T tokens is run as N = B·T rows for every row-wise op (linears,
//! norms, element-wise ops, RoPE with positions t mod T); attention runs one window at a time on
//! copies of its rows. Kept from the forward, per block: the block input (attention-norm input),
//! its norm, q and k after RoPE, v, the attention probabilities of each window, the attention
//! output, the mid residual (MLP-norm input), its norm and the MLP's pre-activations; per adapted
//! module u = x·Aᵀ. The gradient of the embeddings is never formed: nothing before the first block
//! is trainable, and the first block's input gradient is skipped too.

use std::cell::Cell;

use super::{GpuLora, Site, TrainError};
use crate::gpu::{self, adamw::AdamW, DispatchCache, GpuContext, GpuError, GpuTensor, Recorder};
use crate::model::{Arch, Config, GpuBlock, GpuLinear, GpuMlp, GpuModel, WeightLayout};
use crate::ops::{Layout, Matmul};
use crate::reference::attention::Heads;
use crate::reference::cross_entropy::IGNORE;

struct LayerActs {
    /// Block input [N, d] (the attention norm's input).
    x_in: GpuTensor,
    /// attn_norm(x_in) [N, d]: the input of q, k, v.
    h1: GpuTensor,
    /// After RoPE (Llama): [N, q_dim], [N, kv_dim], [N, kv_dim].
    q: GpuTensor,
    k: GpuTensor,
    v: GpuTensor,
    /// Per window: P [Hq, T, T].
    probs: Vec<GpuTensor>,
    /// Attention output [N, q_dim]: the input of o.
    att: GpuTensor,
    /// x_in + o(att) [N, d]: the MLP norm's input.
    x_mid: GpuTensor,
    /// mlp_norm(x_mid) [N, d].
    h2: GpuTensor,
    /// GPT-2: fc output, gelu output. Llama: gate output, up output, silu(gate)·up. [N, ffn] each.
    ff1: GpuTensor,
    ff2: GpuTensor,
    ff3: GpuTensor,
}

/// Everything one training step of a fixed batch shape needs on the GPU, with the adapter it trains.
pub struct Trainer {
    pub lora: GpuLora,
    /// Windows per batch (B) and tokens per window (T).
    pub batch: usize,
    pub seq: usize,
    rows: usize,
    /// Predicted positions: B·(T − 1).
    count: usize,
    ids: GpuTensor,
    pos_ids: GpuTensor,
    targets: GpuTensor,
    layers: Vec<LayerActs>,
    x_final: GpuTensor,
    hf: GpuTensor,
    logits: GpuTensor,
    dlogits: GpuTensor,
    losses: GpuTensor,
    ones: GpuTensor,
    /// Σ of the mean batch losses of the forwards since the last [`Trainer::read_loss`].
    loss: GpuTensor,
    /// How many batch losses `loss` holds, and the last value read (returned if none since).
    loss_terms: Cell<u32>,
    last_loss: Cell<f32>,
    /// LoRA dropout on the adapters' input (PEFT's `lora_dropout`): p, and whether the forward being
    /// encoded is a training one (evaluation never drops). Masks are regenerated from
    /// (`dropout_seed`, step, micro-batch, module) in the backward, never stored.
    dropout: f32,
    pub dropout_seed: u32,
    training: Cell<bool>,
    micro: Cell<u32>,
    /// Whether the forward adds the adapter's branch (off: the frozen model alone, the path a merged
    /// model takes, for timing merged against unmerged on identical kernels).
    adapter_on: Cell<bool>,
    /// Uniforms and bind groups of each kind of recording (train step, gradients, update, scoring,
    /// forward with or without adapter): after the first of each, no GPU object is made per step.
    caches: std::cell::RefCell<std::collections::HashMap<&'static str, std::sync::Arc<std::sync::Mutex<DispatchCache>>>>,
    /// dropout(x) [N, max in] of the module being run (only when dropout is on).
    xd: GpuTensor,
    /// Per adapter module: u = x·Aᵀ and g = Σ_parts dy·B_p, [N, r] each.
    u: Vec<GpuTensor>,
    g: Vec<GpuTensor>,
    // Scratch shared by the blocks.
    proj: GpuTensor,
    dh: GpuTensor,
    dtmp: GpuTensor,
    grad_a: GpuTensor,
    grad_b: GpuTensor,
    d_att: GpuTensor,
    dq: GpuTensor,
    dk: GpuTensor,
    dv: GpuTensor,
    dff1: GpuTensor,
    dff2: GpuTensor,
    dff3: GpuTensor,
    // One window's rows [T, ·] for attention.
    qs: GpuTensor,
    ks: GpuTensor,
    vs: GpuTensor,
    os: GpuTensor,
    dos: GpuTensor,
    dqs: GpuTensor,
    dks: GpuTensor,
    dvs: GpuTensor,
    ds: GpuTensor,
}

fn heads(c: &Config) -> Heads {
    Heads { q_heads: c.num_heads, kv_heads: c.num_kv_heads, head_dim: c.head_dim }
}

/// y [rows, out] = x·W (+ b) of a frozen layer (every weight part into its column block).
fn linear_forward(
    ctx: &GpuContext,
    enc: &mut Recorder,
    l: &GpuLinear,
    x: &GpuTensor,
    rows: usize,
    y: &GpuTensor,
) -> Result<(), GpuError> {
    for (row0, part) in &l.weight.parts {
        let spec = match l.layout {
            WeightLayout::InOut => Matmul::new(rows, l.out_dim, l.in_dim, Layout::XW),
            WeightLayout::OutIn => Matmul::new(rows, part.shape[0], l.in_dim, Layout::XWt),
        }
        .into_block(l.out_dim, 0, *row0);
        gpu::matmul::encode(ctx, enc, &spec, x, part, l.bias.as_ref(), y)?;
    }
    Ok(())
}

/// dx [rows, in] = beta·dx + dy·(∂y/∂x) of a frozen layer: dy·W for W [out, in], dy·Wᵀ for
/// Conv1D's W [in, out].
fn linear_input_grad(
    ctx: &GpuContext,
    enc: &mut Recorder,
    l: &GpuLinear,
    dy: &GpuTensor,
    rows: usize,
    dx: &GpuTensor,
    beta: f32,
) -> Result<(), GpuError> {
    let [(_, w)] = l.weight.parts.as_slice() else {
        return Err(GpuError::Shape {
            op: "linear backward",
            detail: "a weight split in several buffers has no backward yet".into(),
        });
    };
    let layout = match l.layout {
        WeightLayout::OutIn => Layout::XW,
        WeightLayout::InOut => Layout::XWt,
    };
    let spec = Matmul::new(rows, l.in_dim, l.out_dim, layout).scaled(1.0, beta);
    gpu::matmul::encode(ctx, enc, &spec, dy, w, None, dx)
}

/// Copy `rows` rows of `width` floats from row `src_row` of `src` to row `dst_row` of `dst`.
#[allow(clippy::too_many_arguments)]
fn copy_rows(
    enc: &mut Recorder,
    src: &GpuTensor,
    src_row: usize,
    dst: &GpuTensor,
    dst_row: usize,
    rows: usize,
    width: usize,
) {
    let row = (width * 4) as u64;
    enc.copy_buffer_to_buffer(&src.buffer, src_row as u64 * row, &dst.buffer, dst_row as u64 * row, rows as u64 * row);
}

impl Trainer {
    /// Allocate the activations for batches of `batch` windows of `seq` tokens.
    pub async fn new(ctx: &GpuContext, model: &GpuModel, lora: GpuLora, batch: usize, seq: usize) -> Result<Self, TrainError> {
        let c = &model.config;
        if batch == 0 || seq < 2 {
            return Err(TrainError::Batch(format!("{batch} windows of {seq} tokens: need at least one window of two tokens")));
        }
        if seq > c.max_positions {
            return Err(TrainError::Batch(format!("windows of {seq} tokens do not fit the model's context of {}", c.max_positions)));
        }
        // The logits of a whole micro-batch live in one buffer (a 50k vocabulary makes them the
        // largest activation by far).
        let logit_bytes = (batch * seq * c.vocab_size * 4) as u64;
        if logit_bytes > ctx.max_binding() {
            return Err(TrainError::Batch(format!(
                "{batch} windows of {seq} tokens need {} of logits ({} per token), over this GPU's {} per buffer: use a smaller batch or seq-len",
                super::memory::human(logit_bytes),
                super::memory::human((c.vocab_size * 4) as u64),
                super::memory::human(ctx.max_binding())
            )));
        }
        for b in &model.blocks {
            let mut layers = vec![&b.q, &b.k, &b.v, &b.o];
            match &b.mlp {
                GpuMlp::Gelu { fc, proj } => layers.extend([fc, proj]),
                GpuMlp::SwiGlu { gate, up, down } => layers.extend([gate, up, down]),
            }
            if layers.iter().any(|l| l.weight.parts.len() > 1) {
                return Err(TrainError::Unsupported("a layer weight split into several buffers".into()));
            }
        }
        let (n, d, f, qd, kvd, v) = (batch * seq, c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
        let hq = c.num_heads;
        // GPT-2's MLP has no third activation (Llama's silu(gate)·up).
        let f3 = if c.arch == Arch::Llama { f } else { 0 };
        let z = |shape: Vec<usize>| async move { ctx.zeros(&shape).await };
        let mut layers = Vec::new();
        for _ in &model.blocks {
            let mut probs = Vec::new();
            for _ in 0..batch {
                probs.push(z(vec![hq, seq, seq]).await?);
            }
            layers.push(LayerActs {
                x_in: z(vec![n, d]).await?,
                h1: z(vec![n, d]).await?,
                q: z(vec![n, qd]).await?,
                k: z(vec![n, kvd]).await?,
                v: z(vec![n, kvd]).await?,
                probs,
                att: z(vec![n, qd]).await?,
                x_mid: z(vec![n, d]).await?,
                h2: z(vec![n, d]).await?,
                ff1: z(vec![n, f]).await?,
                ff2: z(vec![n, f]).await?,
                ff3: z(vec![n, f3]).await?,
            });
        }
        let positions: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
        let dropout = lora.config.lora_dropout;
        if !(0.0..1.0).contains(&dropout) {
            return Err(TrainError::InvalidSetting { setting: "dropout", message: format!("LoRA dropout must be in [0, 1), not {dropout}") });
        }
        let max_in = lora.modules.iter().map(|m| m.in_dim).max().unwrap_or(0);
        let xd = z(vec![n, if dropout > 0.0 { max_in } else { 0 }]).await?;
        let mut u = Vec::new();
        let mut g = Vec::new();
        for m in &lora.modules {
            u.push(z(vec![n, m.rank]).await?);
            g.push(z(vec![n, m.rank]).await?);
        }
        Ok(Self {
            batch,
            seq,
            rows: n,
            count: batch * (seq - 1),
            ids: ctx.upload_u32(&vec![0; n], &[n]).await?,
            pos_ids: ctx.upload_u32(&positions, &[n]).await?,
            targets: ctx.upload_u32(&vec![IGNORE; n], &[n]).await?,
            layers,
            x_final: z(vec![n, d]).await?,
            hf: z(vec![n, d]).await?,
            logits: z(vec![n, v]).await?,
            dlogits: z(vec![n, v]).await?,
            losses: z(vec![n]).await?,
            ones: ctx.upload(&vec![1.0; n], &[n]).await?,
            loss: z(vec![1]).await?,
            loss_terms: Cell::new(0),
            last_loss: Cell::new(f32::NAN),
            dropout,
            dropout_seed: 0,
            training: Cell::new(false),
            micro: Cell::new(0),
            adapter_on: Cell::new(true),
            caches: Default::default(),
            xd,
            u,
            g,
            proj: z(vec![n, d]).await?,
            dh: z(vec![n, d]).await?,
            dtmp: z(vec![n, d]).await?,
            grad_a: z(vec![n, d]).await?,
            grad_b: z(vec![n, d]).await?,
            d_att: z(vec![n, qd]).await?,
            dq: z(vec![n, qd]).await?,
            dk: z(vec![n, kvd]).await?,
            dv: z(vec![n, kvd]).await?,
            dff1: z(vec![n, f]).await?,
            dff2: z(vec![n, f]).await?,
            dff3: z(vec![n, f3]).await?,
            qs: z(vec![seq, qd]).await?,
            ks: z(vec![seq, kvd]).await?,
            vs: z(vec![seq, kvd]).await?,
            os: z(vec![seq, qd]).await?,
            dos: z(vec![seq, qd]).await?,
            dqs: z(vec![seq, qd]).await?,
            dks: z(vec![seq, kvd]).await?,
            dvs: z(vec![seq, kvd]).await?,
            ds: z(vec![gpu::attention::backward_scratch_len(seq, &heads(c))]).await?,
            lora,
        })
    }

    /// Write a batch ([B·T] ids, window after window) and its next-token targets to the GPU.
    fn set_batch(&self, ctx: &GpuContext, model: &GpuModel, tokens: &[u32]) -> Result<(), TrainError> {
        if tokens.len() != self.rows {
            return Err(TrainError::Batch(format!(
                "{} tokens given for {} windows of {} tokens",
                tokens.len(),
                self.batch,
                self.seq
            )));
        }
        let vocab = model.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(crate::model::ModelError::TokenOutOfRange { id, vocab }.into());
        }
        let targets: Vec<u32> = (0..self.rows)
            .map(|i| if (i + 1) % self.seq == 0 { IGNORE } else { tokens[i + 1] })
            .collect();
        ctx.queue.write_buffer(&self.ids.buffer, 0, bytemuck::cast_slice(tokens));
        ctx.queue.write_buffer(&self.targets.buffer, 0, bytemuck::cast_slice(&targets));
        Ok(())
    }

    /// Score `chunks` (each 2..=T tokens, at most B of them) with the adapter, each on its own:
    /// (Σ next-token cross-entropy, predicted positions). Shorter chunks and unused windows are padded
    /// and their positions ignored (attention is causal, so padding after a chunk cannot change it).
    /// The training loss (`read_loss`) is left alone.
    pub async fn loss_sum(&self, ctx: &GpuContext, model: &GpuModel, chunks: &[&[u32]]) -> Result<(f64, usize), TrainError> {
        let vocab = model.config.vocab_size;
        if chunks.len() > self.batch || chunks.iter().any(|c| c.len() < 2 || c.len() > self.seq) {
            return Err(TrainError::Batch(format!(
                "scoring takes at most {} chunks of 2..={} tokens",
                self.batch, self.seq
            )));
        }
        let mut ids = vec![0u32; self.rows];
        let mut targets = vec![IGNORE; self.rows];
        for (w, chunk) in chunks.iter().enumerate() {
            if let Some(&id) = chunk.iter().find(|&&id| id as usize >= vocab) {
                return Err(crate::model::ModelError::TokenOutOfRange { id, vocab }.into());
            }
            ids[w * self.seq..w * self.seq + chunk.len()].copy_from_slice(chunk);
            targets[w * self.seq..w * self.seq + chunk.len() - 1].copy_from_slice(&chunk[1..]);
        }
        ctx.queue.write_buffer(&self.ids.buffer, 0, bytemuck::cast_slice(&ids));
        ctx.queue.write_buffer(&self.targets.buffer, 0, bytemuck::cast_slice(&targets));
        ctx.run_cached(&self.cache("score"), |enc| self.encode_forward(ctx, enc, model, false)).await?;
        let losses = ctx.read(&self.losses).await?;
        let sum = losses.iter().zip(&targets).filter(|(_, &t)| t != IGNORE).map(|(&l, _)| l as f64).sum();
        Ok((sum, chunks.iter().map(|c| c.len() - 1).sum()))
    }

    /// The forward pass alone on the batch already on the GPU (the last `train_step`'s or
    /// `loss_sum`'s tokens), with or without the adapter branch, submitted but not awaited: what
    /// `loratab bench` times as inference (base or merged weights: `with_adapter` false; unmerged
    /// adapter: true). Nothing is read back and the training loss is left alone.
    pub async fn forward_only(&self, ctx: &GpuContext, model: &GpuModel, with_adapter: bool) -> Result<(), TrainError> {
        self.adapter_on.set(with_adapter);
        let cache = self.cache(if with_adapter { "forward" } else { "forward-base" });
        let result = ctx.run_cached(&cache, |enc| self.encode_forward(ctx, enc, model, false)).await;
        self.adapter_on.set(true);
        Ok(result?)
    }

    /// One training step on `tokens` (B windows of T tokens, back to back): forward, loss, backward
    /// and an AdamW update of every A and B with gradient · `grad_scale`, in one command encoder.
    /// The loss (of the adapter before the update) stays on the GPU: see [`Trainer::read_loss`].
    pub async fn train_step(
        &mut self,
        ctx: &GpuContext,
        model: &GpuModel,
        tokens: &[u32],
        opt: &AdamW,
        grad_scale: f32,
    ) -> Result<(), TrainError> {
        self.set_batch(ctx, model, tokens)?;
        self.lora.step += 1;
        self.micro.set(0);
        let step = self.lora.step;
        let this = &*self;
        ctx.run_cached(&self.cache("step"), |enc| {
            this.encode_forward(ctx, enc, model, true)?;
            this.encode_backward(ctx, enc, model, 0.0)?;
            this.encode_update(ctx, enc, opt, step, grad_scale)
        })
        .await?;
        Ok(())
    }

    /// Forward, loss and backward of one micro-batch, adding its gradients to those already in the
    /// adapter's `grad` buffers when `accumulate` (else overwriting them). Nothing is updated.
    pub async fn accumulate_gradients(
        &mut self,
        ctx: &GpuContext,
        model: &GpuModel,
        tokens: &[u32],
        accumulate: bool,
    ) -> Result<(), TrainError> {
        self.set_batch(ctx, model, tokens)?;
        let acc = if accumulate { 1.0 } else { 0.0 };
        self.micro.set(if accumulate { self.micro.get() + 1 } else { 0 });
        ctx.run_cached(&self.cache("gradients"), |enc| {
            self.encode_forward(ctx, enc, model, true)?;
            self.encode_backward(ctx, enc, model, acc)
        })
        .await?;
        Ok(())
    }

    /// One AdamW step of every trainable A and B with the gradients in their `grad` buffers ·
    /// `grad_scale` (clipping and 1/k accumulation averaging folded in).
    pub async fn update(&mut self, ctx: &GpuContext, opt: &AdamW, grad_scale: f32) -> Result<(), TrainError> {
        self.lora.step += 1;
        let step = self.lora.step;
        ctx.run_cached(&self.cache("update"), |enc| self.encode_update(ctx, enc, opt, step, grad_scale)).await?;
        Ok(())
    }

    /// Forward, loss and backward only (the gradients land in the adapter's `grad` buffers; nothing
    /// is updated): for checking gradients, or accumulating them by hand.
    pub async fn compute_gradients(&mut self, ctx: &GpuContext, model: &GpuModel, tokens: &[u32]) -> Result<(), TrainError> {
        self.accumulate_gradients(ctx, model, tokens, false).await
    }

    /// The mean next-token loss of the batches run since the last call (each before its update):
    /// the batch losses add up on the GPU, so reading them only every N steps costs one read-back
    /// per N steps. With no batch since the last call, the last value again.
    pub async fn read_loss(&self, ctx: &GpuContext) -> Result<f32, GpuError> {
        let terms = self.loss_terms.get();
        if terms > 0 {
            self.last_loss.set(ctx.read(&self.loss).await?[0] / terms as f32);
            self.loss_terms.set(0);
        }
        Ok(self.last_loss.get())
    }

    /// The dispatch cache of one kind of recording (see `caches`).
    fn cache(&self, kind: &'static str) -> std::sync::Arc<std::sync::Mutex<DispatchCache>> {
        self.caches.borrow_mut().entry(kind).or_insert_with(DispatchCache::new).clone()
    }

    /// GPU objects made by the dispatch caches so far (constant once every kind of step has run once).
    pub fn dispatch_objects_created(&self) -> usize {
        self.caches.borrow().values().map(|c| c.lock().unwrap().created).sum()
    }

    /// The block input of layer `l` (`x_final` after the last block).
    fn x_in(&self, l: usize) -> &GpuTensor {
        self.layers.get(l).map_or(&self.x_final, |a| &a.x_in)
    }

    /// y = frozen layer (+ its adapter part, if any) of x.
    #[allow(clippy::too_many_arguments)]
    fn dropping(&self) -> bool {
        self.dropout > 0.0 && self.training.get()
    }

    /// The seed of module `m`'s mask in this micro-batch: the same in its forward and backward,
    /// different for every module, micro-batch and step (and so exactly repeated on resume).
    fn mask_seed(&self, m: usize) -> u32 {
        use crate::reference::dropout::pcg;
        pcg(pcg(pcg(self.dropout_seed ^ self.lora.step) ^ self.micro.get()) ^ m as u32)
    }

    /// Module `m`'s adapter input: `x` itself, or dropout(x) in `xd` while training with dropout.
    fn dropped<'a>(&'a self, ctx: &GpuContext, enc: &mut Recorder, m: usize, x: &'a GpuTensor) -> Result<&'a GpuTensor, GpuError> {
        if !self.dropping() {
            return Ok(x);
        }
        let n = self.rows * self.lora.modules[m].in_dim;
        gpu::dropout::encode(ctx, enc, x, &self.xd, n, self.dropout, self.mask_seed(m), 0.0)?;
        Ok(&self.xd)
    }

    fn linear(
        &self,
        ctx: &GpuContext,
        enc: &mut Recorder,
        l: usize,
        block: &GpuBlock,
        site: Site,
        x: &GpuTensor,
        y: &GpuTensor,
    ) -> Result<(), GpuError> {
        let lin = site.linear(block).expect("the site exists in this architecture");
        let n = self.rows;
        linear_forward(ctx, enc, lin, x, n, y)?;
        if !self.adapter_on.get() {
            return Ok(());
        }
        if let Some(&(m, p)) = self.lora.index.get(&(l, site)) {
            let module = &self.lora.modules[m];
            let (r, u) = (module.rank, &self.u[m]);
            if p == 0 {
                // u = x·Aᵀ (shared by every part of a fused module, which all read the same x).
                let x = self.dropped(ctx, enc, m, x)?;
                let spec = Matmul::new(n, r, module.in_dim, Layout::XWt);
                gpu::matmul::encode(ctx, enc, &spec, x, &module.a.value, None, u)?;
            }
            // y += s·u·B_pᵀ
            let spec = Matmul::new(n, lin.out_dim, r, Layout::XWt).scaled(module.scale, 1.0);
            gpu::matmul::encode(ctx, enc, &spec, u, &module.parts[p].1.value, None, y)?;
        }
        Ok(())
    }

    /// Backward of [`Trainer::linear`] given dy: the adapter's dB (and, at its last part, dA), and
    /// dx = beta·dx + dy·∂y/∂x (+ the adapter's s·g·A) when `dx` is given. `acc` is 1 to add the
    /// adapter's gradients to those already in its `grad` buffers (accumulation), 0 to overwrite.
    /// A frozen part (see [`GpuLora::freeze`]) gets no dB: its gradient stays zero.
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(
        &self,
        ctx: &GpuContext,
        enc: &mut Recorder,
        acc: f32,
        l: usize,
        block: &GpuBlock,
        site: Site,
        x: &GpuTensor,
        dy: &GpuTensor,
        dx: Option<(&GpuTensor, f32)>,
    ) -> Result<(), GpuError> {
        let lin = site.linear(block).expect("the site exists in this architecture");
        let n = self.rows;
        if let Some((dx, beta)) = dx {
            linear_input_grad(ctx, enc, lin, dy, n, dx, beta)?;
        }
        let Some(&(m, p)) = self.lora.index.get(&(l, site)) else {
            return Ok(());
        };
        let module = &self.lora.modules[m];
        let (r, s, u, g) = (module.rank, module.scale, &self.u[m], &self.g[m]);
        let part = &module.parts[p].1;
        // dB_p (+)= s·dyᵀ·u
        if !module.frozen[p] {
            let spec = Matmul::new(lin.out_dim, r, n, Layout::XtG).scaled(s, acc);
            gpu::matmul::encode(ctx, enc, &spec, dy, u, None, &part.grad)?;
        }
        // g (+)= dy·B_p
        let spec = Matmul::new(n, r, lin.out_dim, Layout::XW).scaled(1.0, if p == 0 { 0.0 } else { 1.0 });
        gpu::matmul::encode(ctx, enc, &spec, dy, &part.value, None, g)?;
        if p + 1 == module.parts.len() {
            // dA (+)= s·gᵀ·dropout(x), with the forward's mask.
            let xm = self.dropped(ctx, enc, m, x)?;
            let spec = Matmul::new(r, module.in_dim, n, Layout::XtG).scaled(s, acc);
            gpu::matmul::encode(ctx, enc, &spec, g, xm, None, &module.a.grad)?;
            // dx += s·g·A, through the same mask when dropout is on.
            if let Some((dx, _)) = dx {
                if self.dropping() {
                    let spec = Matmul::new(n, module.in_dim, r, Layout::XW).scaled(s, 0.0);
                    gpu::matmul::encode(ctx, enc, &spec, g, &module.a.value, None, &self.xd)?;
                    gpu::dropout::encode(ctx, enc, &self.xd, dx, n * module.in_dim, self.dropout, self.mask_seed(m), 1.0)?;
                } else {
                    let spec = Matmul::new(n, module.in_dim, r, Layout::XW).scaled(s, 1.0);
                    gpu::matmul::encode(ctx, enc, &spec, g, &module.a.value, None, dx)?;
                }
            }
        }
        Ok(())
    }

    /// The forward pass and per-row losses; with `count_loss`, the batch's mean loss is added to
    /// `loss` (see [`Trainer::read_loss`]).
    fn encode_forward(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, count_loss: bool) -> Result<(), GpuError> {
        // Only training forwards (those whose loss counts) drop adapter inputs.
        self.training.set(count_loss);
        let c = &model.config;
        let (n, t, d, qd, kvd, v) = (self.rows, self.seq, c.hidden_size, c.q_dim(), c.kv_dim(), c.vocab_size);
        let heads = heads(c);
        let x0 = self.x_in(0);
        // Each part writes only its own ids' rows, so together they overwrite every row.
        for (row0, part) in &model.token_embedding.parts {
            gpu::embedding::encode(ctx, enc, part, d, *row0, &self.ids, x0, false)?;
        }
        if let Some(pos) = &model.position_embedding {
            gpu::embedding::encode(ctx, enc, pos, d, 0, &self.pos_ids, x0, true)?;
        }
        for (l, b) in model.blocks.iter().enumerate() {
            let a = &self.layers[l];
            if l == 0 {
                // Later blocks' attn_norm is fused into the previous block's last residual add.
                b.attn_norm.encode(ctx, enc, c, &a.x_in, n, &a.h1)?;
            }
            self.linear(ctx, enc, l, b, Site::Q, &a.h1, &a.q)?;
            self.linear(ctx, enc, l, b, Site::K, &a.h1, &a.k)?;
            self.linear(ctx, enc, l, b, Site::V, &a.h1, &a.v)?;
            if c.arch == Arch::Llama {
                gpu::rope::encode_batched(ctx, enc, &a.q, self.batch, t, c.num_heads, c.head_dim, c.rope_theta)?;
                gpu::rope::encode_batched(ctx, enc, &a.k, self.batch, t, c.num_kv_heads, c.head_dim, c.rope_theta)?;
            }
            for s in 0..self.batch {
                copy_rows(enc, &a.q, s * t, &self.qs, 0, t, qd);
                copy_rows(enc, &a.k, s * t, &self.ks, 0, t, kvd);
                copy_rows(enc, &a.v, s * t, &self.vs, 0, t, kvd);
                gpu::attention::encode(ctx, enc, &self.qs, &self.ks, &self.vs, &self.os, &a.probs[s], t, 0, &heads)?;
                copy_rows(enc, &self.os, 0, &a.att, s * t, t, qd);
            }
            self.linear(ctx, enc, l, b, Site::O, &a.att, &self.proj)?;
            // x_mid = x_in + o(…), h2 = mlp_norm(x_mid): one fused pass.
            b.mlp_norm.encode_residual(ctx, enc, c, &a.x_in, &self.proj, &a.x_mid, n, &a.h2)?;
            match &b.mlp {
                GpuMlp::Gelu { .. } => {
                    self.linear(ctx, enc, l, b, Site::Fc, &a.h2, &a.ff1)?;
                    gpu::gelu::encode(ctx, enc, &a.ff1, &a.ff2)?;
                    self.linear(ctx, enc, l, b, Site::Proj, &a.ff2, &self.proj)?;
                }
                GpuMlp::SwiGlu { .. } => {
                    self.linear(ctx, enc, l, b, Site::Gate, &a.h2, &a.ff1)?;
                    self.linear(ctx, enc, l, b, Site::Up, &a.h2, &a.ff2)?;
                    gpu::silu_mul::encode(ctx, enc, &a.ff1, &a.ff2, &a.ff3)?;
                    self.linear(ctx, enc, l, b, Site::Down, &a.ff3, &self.proj)?;
                }
            }
            // x_in(l + 1) = x_mid + mlp(…), fused with the norm that reads it next: the next
            // block's attn_norm, or the final norm after the last block.
            let (next_norm, next_h) = match (model.blocks.get(l + 1), self.layers.get(l + 1)) {
                (Some(nb), Some(na)) => (&nb.attn_norm, &na.h1),
                _ => (&model.final_norm, &self.hf),
            };
            next_norm.encode_residual(ctx, enc, c, &a.x_mid, &self.proj, self.x_in(l + 1), n, next_h)?;
        }
        if model.blocks.is_empty() {
            model.final_norm.encode(ctx, enc, c, &self.x_final, n, &self.hf)?;
        }
        match &model.lm_head {
            Some(head) => linear_forward(ctx, enc, head, &self.hf, n, &self.logits)?,
            None => {
                for (row0, part) in &model.token_embedding.parts {
                    let spec = Matmul::new(n, part.shape[0], d, Layout::XWt).into_block(v, 0, *row0);
                    gpu::matmul::encode(ctx, enc, &spec, &self.hf, part, None, &self.logits)?;
                }
            }
        }
        gpu::cross_entropy::encode(ctx, enc, &self.logits, &self.targets, &self.losses, n, v)?;
        if !count_loss {
            return Ok(());
        }
        // loss (+)= (1 / count) · Σ losses (ignored rows are 0), as a [1, N]·[N, 1] product.
        let terms = self.loss_terms.get();
        let beta = if terms == 0 { 0.0 } else { 1.0 };
        let spec = Matmul::new(1, 1, n, Layout::XW).scaled(1.0 / self.count as f32, beta);
        gpu::matmul::encode(ctx, enc, &spec, &self.ones, &self.losses, None, &self.loss)?;
        self.loss_terms.set(terms + 1);
        Ok(())
    }

    /// The backward pass; `acc` = 1 adds the adapter's gradients to its `grad` buffers, 0 overwrites.
    fn encode_backward(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, acc: f32) -> Result<(), GpuError> {
        let c = &model.config;
        let (n, d, v) = (self.rows, c.hidden_size, c.vocab_size);
        gpu::cross_entropy::encode_backward(ctx, enc, &self.logits, &self.targets, &self.dlogits, n, v, 1.0 / self.count as f32)?;
        // LM head: input gradient only, dh = dlogits·W summed over W's row blocks (a vocabulary
        // split across buffers: each part reads its own columns of dlogits).
        match &model.lm_head {
            Some(head) if head.layout == WeightLayout::InOut => linear_input_grad(ctx, enc, head, &self.dlogits, n, &self.dh, 0.0)?,
            head => {
                let parts = head.as_ref().map_or(&model.token_embedding.parts, |h| &h.weight.parts);
                for (i, (row0, part)) in parts.iter().enumerate() {
                    let spec = Matmul::new(n, d, part.shape[0], Layout::XW).from_block(v, *row0).scaled(1.0, if i == 0 { 0.0 } else { 1.0 });
                    gpu::matmul::encode(ctx, enc, &spec, &self.dlogits, part, None, &self.dh)?;
                }
            }
        }
        self.encode_blocks_backward(ctx, enc, model, acc)
    }

    /// The backward from dh (the final norm's output gradient) down through every block.
    fn encode_blocks_backward(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, acc: f32) -> Result<(), GpuError> {
        let c = &model.config;
        let (n, t, qd, kvd) = (self.rows, self.seq, c.q_dim(), c.kv_dim());
        let heads = heads(c);
        if model.blocks.is_empty() {
            return Ok(());
        }
        // The residual stream's gradient alternates between two buffers.
        let (mut cur, mut other) = (&self.grad_a, &self.grad_b);
        model.final_norm.encode_backward(ctx, enc, c, &self.x_final, &self.dh, n, cur)?;
        for (l, b) in model.blocks.iter().enumerate().rev() {
            let a = &self.layers[l];
            // MLP: x_out = x_mid + mlp(mlp_norm(x_mid)).
            match &b.mlp {
                GpuMlp::Gelu { .. } => {
                    self.linear_backward(ctx, enc, acc, l, b, Site::Proj, &a.ff2, cur, Some((&self.dff2, 0.0)))?;
                    gpu::gelu::encode_backward(ctx, enc, &a.ff1, &self.dff2, &self.dff1)?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Fc, &a.h2, &self.dff1, Some((&self.dh, 0.0)))?;
                }
                GpuMlp::SwiGlu { .. } => {
                    self.linear_backward(ctx, enc, acc, l, b, Site::Down, &a.ff3, cur, Some((&self.dff3, 0.0)))?;
                    gpu::silu_mul::encode_backward(ctx, enc, &a.ff1, &a.ff2, &self.dff3, &self.dff1, &self.dff2)?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Gate, &a.h2, &self.dff1, Some((&self.dh, 0.0)))?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Up, &a.h2, &self.dff2, Some((&self.dh, 1.0)))?;
                }
            }
            b.mlp_norm.encode_backward(ctx, enc, c, &a.x_mid, &self.dh, n, &self.dtmp)?;
            gpu::add::encode(ctx, enc, cur, &self.dtmp, other)?;
            std::mem::swap(&mut cur, &mut other);

            // Attention: x_mid = x_in + o(attention(q, k, v of attn_norm(x_in))).
            self.linear_backward(ctx, enc, acc, l, b, Site::O, &a.att, cur, Some((&self.d_att, 0.0)))?;
            for s in 0..self.batch {
                copy_rows(enc, &a.q, s * t, &self.qs, 0, t, qd);
                copy_rows(enc, &a.k, s * t, &self.ks, 0, t, kvd);
                copy_rows(enc, &a.v, s * t, &self.vs, 0, t, kvd);
                copy_rows(enc, &self.d_att, s * t, &self.dos, 0, t, qd);
                gpu::attention::encode_backward(
                    ctx, enc, &self.qs, &self.ks, &self.vs, &a.probs[s], &self.dos, &self.dqs, &self.dks, &self.dvs, &self.ds, t,
                    &heads,
                )?;
                copy_rows(enc, &self.dqs, 0, &self.dq, s * t, t, qd);
                copy_rows(enc, &self.dks, 0, &self.dk, s * t, t, kvd);
                copy_rows(enc, &self.dvs, 0, &self.dv, s * t, t, kvd);
            }
            if c.arch == Arch::Llama {
                gpu::rope::encode_backward_batched(ctx, enc, &self.dq, self.batch, t, c.num_heads, c.head_dim, c.rope_theta)?;
                gpu::rope::encode_backward_batched(ctx, enc, &self.dk, self.batch, t, c.num_kv_heads, c.head_dim, c.rope_theta)?;
            }
            // The first block's input gradient would only reach the (frozen) embeddings.
            let first = l == 0;
            let dx = |beta| if first { None } else { Some((&self.dh, beta)) };
            self.linear_backward(ctx, enc, acc, l, b, Site::Q, &a.h1, &self.dq, dx(0.0))?;
            self.linear_backward(ctx, enc, acc, l, b, Site::K, &a.h1, &self.dk, dx(1.0))?;
            self.linear_backward(ctx, enc, acc, l, b, Site::V, &a.h1, &self.dv, dx(1.0))?;
            if !first {
                b.attn_norm.encode_backward(ctx, enc, c, &a.x_in, &self.dh, n, &self.dtmp)?;
                gpu::add::encode(ctx, enc, cur, &self.dtmp, other)?;
                std::mem::swap(&mut cur, &mut other);
            }
        }
        Ok(())
    }

    fn encode_update(&self, ctx: &GpuContext, enc: &mut Recorder, opt: &AdamW, step: u32, grad_scale: f32) -> Result<(), GpuError> {
        for m in &self.lora.modules {
            let trainable = m.parts.iter().zip(&m.frozen).filter(|(_, &f)| !f).map(|((_, p), _)| p);
            for p in std::iter::once(&m.a).chain(trainable) {
                gpu::adamw::encode(ctx, enc, &p.value, &p.grad, &p.m, &p.v, opt, step, grad_scale)?;
            }
        }
        Ok(())
    }
}
