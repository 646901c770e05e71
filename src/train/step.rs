//! [`Trainer`]: the activations of one batch shape and the encoding of a LoRA training step.
//!
//! Rows: a batch of B windows of T tokens is run as N = B·T rows for every row-wise op (linears,
//! norms, element-wise ops, RoPE with positions t mod T); attention runs one window at a time on
//! copies of its rows. Kept from the forward, per block: the block input (attention-norm input),
//! its norm, q and k after RoPE, v, each window's attention row logsumexp (the backward
//! recomputes the probabilities from it, so attention keeps O(T) per window), the attention
//! output, the mid residual (MLP-norm input), its norm and the MLP's pre-activations; per adapted
//! module u = x·Aᵀ. The gradient of the embeddings is never formed: nothing before the first block
//! is trainable, and the first block's input gradient is skipped too.
//!
//! The LM head and the loss run over chunks of rows ([`TrainerOptions::logit_rows`]): per chunk the
//! logits, their losses and — in a training forward — their gradient and its product with the head,
//! dh (the final norm's output gradient, kept for the backward). Logits never exist for more than
//! one chunk, so a large vocabulary costs a fixed few MiB whatever the batch.
//!
//! Gradient checkpointing ([`TrainerOptions::grad_checkpoint`]): every block writes its activations
//! into one shared set and only the block inputs are kept per layer; the backward re-runs each
//! block's forward from its input (the same kernels on the same values, dropout masks regenerated
//! from the same seeds, so the same bits) just before that block's backward.

use std::cell::Cell;

use super::activations::{self, Activations};
use super::{GpuLora, Site, TrainError};
use crate::gpu::{self, adamw::AdamW, DispatchCache, GpuContext, GpuError, GpuTensor, Recorder};
use crate::model::block::{self, BlockActs, Pass};
use crate::model::{heads, Arch, Config, GpuBlock, GpuMlp, GpuModel};
use crate::ops::{Layout, Matmul};
use crate::reference::cross_entropy::IGNORE;

/// Everything one training step of a fixed batch shape needs on the GPU, with the adapter it trains.
pub struct Trainer {
    pub lora: GpuLora,
    /// Windows per batch (B) and tokens per window (T).
    pub batch: usize,
    pub seq: usize,
    rows: usize,
    /// Positions of the batch on the GPU whose next token is learnt (B·(T − 1) for text windows;
    /// fewer with labels): the loss is the mean over these.
    count: Cell<usize>,
    /// Rows per chunk of the LM head and the loss.
    logit_rows: usize,
    /// Gradient checkpointing (see the module comment), and whether a block's forward is being
    /// recomputed in the backward (its outputs then go to buffers that are free by then).
    checkpoint: bool,
    recomputing: Cell<bool>,
    /// Every activation and scratch tensor (`activations::plan`, the table the memory estimate sums).
    acts: Activations<GpuTensor>,
    /// AdamW's all-or-nothing flag (one u32, `gpu::adamw`): 1 once an update was refused because
    /// it would have written ±∞ or NaN; then every later update writes nothing until it is cleared.
    status: GpuTensor,
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
}

/// How a [`Trainer`] lays out its activations (the defaults are what training runs with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TrainerOptions {
    /// Keep only each block's input and recompute the rest in the backward.
    pub grad_checkpoint: bool,
    /// Rows per chunk of the LM head and the loss; None: as many as fit 16 MiB of logits (and the
    /// GPU's binding limit), at least one. Smaller chunks change no result, only the dispatch count.
    pub logit_rows: Option<usize>,
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
        Self::with_options(ctx, model, lora, batch, seq, TrainerOptions::default()).await
    }

    /// [`Trainer::new`] with the activations laid out as `options` says.
    pub async fn with_options(
        ctx: &GpuContext,
        model: &GpuModel,
        lora: GpuLora,
        batch: usize,
        seq: usize,
        options: TrainerOptions,
    ) -> Result<Self, TrainError> {
        let c = &model.config;
        if batch == 0 || seq < 2 {
            return Err(TrainError::Batch(format!("{batch} windows of {seq} tokens: need at least one window of two tokens")));
        }
        if seq > c.max_positions {
            return Err(TrainError::Batch(format!("windows of {seq} tokens do not fit the model's context of {}", c.max_positions)));
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
        let n = batch * seq;
        let logit_rows = match options.logit_rows {
            Some(0) => return Err(TrainError::InvalidSetting { setting: "logit_rows", message: "a chunk of logits needs at least one row".into() }),
            Some(rows) => rows.min(n),
            None => activations::logit_rows(c.vocab_size, n, ctx.max_binding()),
        };
        let dropout = lora.config.lora_dropout;
        if !(0.0..1.0).contains(&dropout) {
            return Err(TrainError::InvalidSetting { setting: "dropout", message: format!("LoRA dropout must be in [0, 1), not {dropout}") });
        }
        let ranks: Vec<usize> = lora.modules.iter().map(|m| m.rank).collect();
        let max_in = lora.modules.iter().map(|m| m.in_dim).max().unwrap_or(0);
        let keep = activations::Keep { logit_rows, checkpoint: options.grad_checkpoint };
        let plan = activations::plan(c, batch, seq, &ranks, if dropout > 0.0 { max_in } else { 0 }, keep);
        // Every tensor must fit one binding: refused here, before anything is allocated, rather
        // than after most of the run's memory is taken.
        let limit = ctx.max_binding();
        for (name, shape) in plan.each() {
            let bytes = 4 * shape.iter().product::<usize>() as u64;
            if bytes > limit {
                let what = format!("the activation `{name}` {shape:?} of {batch} windows of {seq} tokens");
                return Err(GpuError::TooLarge { what, bytes, limit }.into());
            }
        }
        let mut tensors = Vec::new();
        for (_, shape) in plan.each() {
            tensors.push(ctx.zeros(shape).await?);
        }
        let acts = plan.fill(tensors);
        let status = ctx.zeros(&[1]).await?;
        // The tensors that do not start as zeros.
        let positions: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
        ctx.queue.write_buffer(&acts.rows.pos_ids.buffer, 0, bytemuck::cast_slice(&positions));
        ctx.queue.write_buffer(&acts.rows.targets.buffer, 0, bytemuck::cast_slice(&vec![IGNORE; n]));
        ctx.queue.write_buffer(&acts.rows.ones.buffer, 0, bytemuck::cast_slice(&vec![1.0f32; n]));
        Ok(Self {
            batch,
            seq,
            rows: n,
            count: Cell::new(batch * (seq - 1)),
            logit_rows,
            checkpoint: options.grad_checkpoint,
            recomputing: Cell::new(false),
            acts,
            status,
            loss_terms: Cell::new(0),
            last_loss: Cell::new(f32::NAN),
            dropout,
            dropout_seed: 0,
            training: Cell::new(false),
            micro: Cell::new(0),
            adapter_on: Cell::new(true),
            caches: Default::default(),
            lora,
        })
    }

    /// Write a batch ([B·T] ids, window after window) and its next-token targets to the GPU: within
    /// each window, position i is trained to predict labels[i + 1] (`labels`: transformers' labels,
    /// [`IGNORE`] where nothing is learnt; None: the tokens themselves, as for a text).
    fn set_batch(&self, ctx: &GpuContext, model: &GpuModel, tokens: &[u32], labels: Option<&[u32]>) -> Result<(), TrainError> {
        if tokens.len() != self.rows || labels.is_some_and(|l| l.len() != self.rows) {
            return Err(TrainError::Batch(format!(
                "{} tokens ({} labels) given for {} windows of {} tokens",
                tokens.len(),
                labels.map_or(tokens.len(), <[u32]>::len),
                self.batch,
                self.seq
            )));
        }
        let vocab = model.config.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(crate::model::ModelError::TokenOutOfRange { id, vocab }.into());
        }
        let labels = labels.unwrap_or(tokens);
        let targets: Vec<u32> = (0..self.rows)
            .map(|i| if (i + 1) % self.seq == 0 { IGNORE } else { labels[i + 1] })
            .collect();
        let count = targets.iter().filter(|&&t| t != IGNORE).count();
        if count == 0 {
            return Err(TrainError::Batch("no position of the batch has a label to learn".into()));
        }
        self.count.set(count);
        ctx.queue.write_buffer(&self.acts.rows.ids.buffer, 0, bytemuck::cast_slice(tokens));
        ctx.queue.write_buffer(&self.acts.rows.targets.buffer, 0, bytemuck::cast_slice(&targets));
        Ok(())
    }

    /// Score `chunks` (each 2..=T tokens, at most B of them) with the adapter, each on its own:
    /// (Σ next-token cross-entropy, predicted positions). Shorter chunks and unused windows are padded
    /// and their positions ignored (attention is causal, so padding after a chunk cannot change it).
    /// The training loss (`read_loss`) is left alone.
    pub async fn loss_sum(&self, ctx: &GpuContext, model: &GpuModel, chunks: &[&[u32]]) -> Result<(f64, usize), TrainError> {
        let labeled: Vec<(&[u32], &[u32])> = chunks.iter().map(|&c| (c, c)).collect();
        self.loss_sum_labeled(ctx, model, &labeled).await
    }

    /// [`Trainer::loss_sum`] of examples with labels ((ids, transformers' labels) of equal length):
    /// (Σ cross-entropy over the learnt positions, their number).
    pub async fn loss_sum_labeled(&self, ctx: &GpuContext, model: &GpuModel, chunks: &[(&[u32], &[u32])]) -> Result<(f64, usize), TrainError> {
        let vocab = model.config.vocab_size;
        if chunks.len() > self.batch || chunks.iter().any(|(c, l)| c.len() < 2 || c.len() > self.seq || l.len() != c.len()) {
            return Err(TrainError::Batch(format!(
                "scoring takes at most {} chunks of 2..={} tokens",
                self.batch, self.seq
            )));
        }
        let mut ids = vec![0u32; self.rows];
        let mut targets = vec![IGNORE; self.rows];
        for (w, (chunk, labels)) in chunks.iter().enumerate() {
            if let Some(&id) = chunk.iter().find(|&&id| id as usize >= vocab) {
                return Err(crate::model::ModelError::TokenOutOfRange { id, vocab }.into());
            }
            ids[w * self.seq..w * self.seq + chunk.len()].copy_from_slice(chunk);
            targets[w * self.seq..w * self.seq + chunk.len() - 1].copy_from_slice(&labels[1..]);
        }
        ctx.queue.write_buffer(&self.acts.rows.ids.buffer, 0, bytemuck::cast_slice(&ids));
        ctx.queue.write_buffer(&self.acts.rows.targets.buffer, 0, bytemuck::cast_slice(&targets));
        ctx.run_cached(&self.cache("score"), |enc| self.encode_forward(ctx, enc, model, false)).await?;
        let losses = ctx.read(&self.acts.rows.losses).await?;
        let sum = losses.iter().zip(&targets).filter(|(_, &t)| t != IGNORE).map(|(&l, _)| l as f64).sum();
        Ok((sum, targets.iter().filter(|&&t| t != IGNORE).count()))
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
    /// The loss (of the adapter before the update) stays on the GPU: see [`Trainer::read_loss`]; an
    /// update refused as it would overflow is only reported by [`Trainer::update_refused`].
    pub async fn train_step(
        &mut self,
        ctx: &GpuContext,
        model: &GpuModel,
        tokens: &[u32],
        opt: &AdamW,
        grad_scale: f32,
    ) -> Result<(), TrainError> {
        self.set_batch(ctx, model, tokens, None)?;
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
        self.accumulate_labeled(ctx, model, tokens, None, accumulate).await
    }

    /// [`Trainer::accumulate_gradients`] with explicit labels (see `set_batch`): the loss is the
    /// mean over the positions whose label is not [`IGNORE`].
    pub async fn accumulate_labeled(
        &mut self,
        ctx: &GpuContext,
        model: &GpuModel,
        tokens: &[u32],
        labels: Option<&[u32]>,
        accumulate: bool,
    ) -> Result<(), TrainError> {
        self.set_batch(ctx, model, tokens, labels)?;
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
    /// `grad_scale` (clipping and 1/k accumulation averaging folded in). All or nothing: an update
    /// that would write ±∞ or NaN anywhere writes nothing, and [`Trainer::update_refused`] says so
    /// (the step count has advanced all the same; [`Trainer::take_refusal`] puts it back).
    pub async fn update(&mut self, ctx: &GpuContext, opt: &AdamW, grad_scale: f32) -> Result<(), TrainError> {
        self.lora.step += 1;
        let step = self.lora.step;
        ctx.run_cached(&self.cache("update"), |enc| self.encode_update(ctx, enc, opt, step, grad_scale)).await?;
        Ok(())
    }

    /// AdamW's flag ([`Trainer::update_refused`]), for a caller that folds it into a read it makes anyway.
    pub fn status(&self) -> &GpuTensor {
        &self.status
    }

    /// Whether an update since the last [`Trainer::take_refusal`] was refused (one tiny read-back).
    pub async fn update_refused(&self, ctx: &GpuContext) -> Result<bool, GpuError> {
        Ok(refused(&ctx.read(&self.status).await?))
    }

    /// After a refused update (`status`, as read, is set): the step count goes back to the last
    /// applied step and the flag is cleared, so the adapter, its moments and its step are exactly
    /// those before the refused step. Returns the refused step, or None when nothing was refused.
    pub fn take_refusal(&mut self, ctx: &GpuContext, status: &[f32]) -> Option<usize> {
        if !refused(status) {
            return None;
        }
        let step = self.lora.step as usize;
        self.lora.step -= 1;
        ctx.queue.write_buffer(&self.status.buffer, 0, &[0; 4]);
        Some(step)
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
        if self.loss_terms.get() > 0 {
            self.take_loss(ctx.read(&self.acts.rows.loss).await?[0]);
        }
        Ok(self.last_loss.get())
    }

    /// [`Trainer::read_loss`] and AdamW's flag (for [`Trainer::take_refusal`]) in one read-back.
    pub async fn read_loss_and_status(&self, ctx: &GpuContext) -> Result<(f32, Vec<f32>), GpuError> {
        if self.loss_terms.get() == 0 {
            return Ok((self.last_loss.get(), ctx.read(&self.status).await?));
        }
        let mut read = ctx.read_many(&[&self.acts.rows.loss, &self.status]).await?;
        let status = read.pop().expect("two tensors read");
        self.take_loss(read[0][0]);
        Ok((self.last_loss.get(), status))
    }

    /// The mean of the batch losses summed in `sum`, remembered as the last value read.
    fn take_loss(&self, sum: f32) {
        self.last_loss.set(sum / self.loss_terms.get() as f32);
        self.loss_terms.set(0);
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
        self.acts.inputs.get(l).unwrap_or(&self.acts.rows.x_final)
    }

    /// Where block `l`'s activations other than its input live: its own set, or the one shared set
    /// with checkpointing.
    fn layer(&self, l: usize) -> &activations::LayerActs<GpuTensor> {
        &self.acts.layers[if self.checkpoint { 0 } else { l }]
    }

    /// Whether adapter inputs are dropped in the forward being encoded.
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
        gpu::dropout::encode(ctx, enc, x, &self.acts.lora.xd, n, self.dropout, self.mask_seed(m), 0.0)?;
        Ok(&self.acts.lora.xd)
    }

    /// Backward of the trainer's [`Pass::project`] given dy: the adapter's dB (and, at its last part, dA), and
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
            lin.encode_input_grad(ctx, enc, dy, n, dx, beta)?;
        }
        let Some(&(m, p)) = self.lora.index.get(&(l, site)) else {
            return Ok(());
        };
        let module = &self.lora.modules[m];
        let (r, s, u, g) = (module.rank, module.scale, &self.acts.lora.u[m], &self.acts.lora.g[m]);
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
                    gpu::matmul::encode(ctx, enc, &spec, g, &module.a.value, None, &self.acts.lora.xd)?;
                    gpu::dropout::encode(ctx, enc, &self.acts.lora.xd, dx, n * module.in_dim, self.dropout, self.mask_seed(m), 1.0)?;
                } else {
                    let spec = Matmul::new(n, module.in_dim, r, Layout::XW).scaled(s, 1.0);
                    gpu::matmul::encode(ctx, enc, &spec, g, &module.a.value, None, dx)?;
                }
            }
        }
        Ok(())
    }

    /// The forward pass and per-row losses; with `count_loss` (a training forward), also the LM
    /// head's part of the backward (see [`Trainer::encode_head`]), and the batch's mean loss is added
    /// to `loss` (see [`Trainer::read_loss`]).
    fn encode_forward(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, count_loss: bool) -> Result<(), GpuError> {
        // Only training forwards (those whose loss counts) drop adapter inputs.
        self.training.set(count_loss);
        let n = self.rows;
        block::encode_network(ctx, enc, model, self)?;
        self.encode_head(ctx, enc, model, count_loss)?;
        if !count_loss {
            return Ok(());
        }
        // loss (+)= (1 / count) · Σ losses (ignored rows are 0), as a [1, N]·[N, 1] product.
        let terms = self.loss_terms.get();
        let beta = if terms == 0 { 0.0 } else { 1.0 };
        let spec = Matmul::new(1, 1, n, Layout::XW).scaled(1.0 / self.count.get() as f32, beta);
        gpu::matmul::encode(ctx, enc, &spec, &self.acts.rows.ones, &self.acts.rows.losses, None, &self.acts.rows.loss)?;
        self.loss_terms.set(terms + 1);
        Ok(())
    }

    /// The LM head and the per-row losses, `logit_rows` rows at a time; with `backward`, per chunk
    /// also dlogits = ∂(mean loss)/∂logits and dh = dlogits·∂logits/∂hf (input gradient only: the
    /// head is frozen) into `scratch.dh`, where the backward starts. Rows are independent in every
    /// op here, so the chunking changes no value.
    fn encode_head(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, backward: bool) -> Result<(), GpuError> {
        let (d, v) = (model.config.hidden_size, model.config.vocab_size);
        let r = &self.acts.rows;
        for row0 in (0..self.rows).step_by(self.logit_rows) {
            let m = self.logit_rows.min(self.rows - row0);
            copy_rows(enc, &r.hf, row0, &r.chunk_h, 0, m, d);
            copy_rows(enc, &r.targets, row0, &r.chunk_targets, 0, m, 1);
            model.encode_logits(ctx, enc, &r.chunk_h, m, &r.logits)?;
            gpu::cross_entropy::encode(ctx, enc, &r.logits, &r.chunk_targets, &r.chunk_losses, m, v)?;
            copy_rows(enc, &r.chunk_losses, 0, &r.losses, row0, m, 1);
            if backward {
                gpu::cross_entropy::encode_backward(ctx, enc, &r.logits, &r.chunk_targets, &r.dlogits, m, v, 1.0 / self.count.get() as f32)?;
                model.encode_logits_backward(ctx, enc, &r.dlogits, m, &r.chunk_dh)?;
                copy_rows(enc, &r.chunk_dh, 0, &self.acts.scratch.dh, row0, m, d);
            }
        }
        Ok(())
    }

    /// The backward from dh (the final norm's output gradient, left by the training forward's
    /// [`Trainer::encode_head`]) down through every block; `acc` = 1 adds the adapter's gradients to
    /// its `grad` buffers, 0 overwrites.
    fn encode_backward(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, acc: f32) -> Result<(), GpuError> {
        let c = &model.config;
        let (n, t, qd, kvd) = (self.rows, self.seq, c.q_dim(), c.kv_dim());
        let heads = heads(c);
        if model.blocks.is_empty() {
            return Ok(());
        }
        // The residual stream's gradient alternates between two buffers.
        let (mut cur, mut other) = (&self.acts.scratch.grad_a, &self.acts.scratch.grad_b);
        model.final_norm.encode_backward(ctx, enc, c, &self.acts.rows.x_final, &self.acts.scratch.dh, n, cur)?;
        for (l, b) in model.blocks.iter().enumerate().rev() {
            if self.checkpoint {
                self.encode_recompute(ctx, enc, model, l)?;
            }
            let a = self.layer(l);
            // MLP: x_out = x_mid + mlp(mlp_norm(x_mid)).
            match &b.mlp {
                GpuMlp::Gelu { .. } => {
                    self.linear_backward(ctx, enc, acc, l, b, Site::Proj, &a.ff2, cur, Some((&self.acts.scratch.dff2, 0.0)))?;
                    gpu::gelu::encode_backward(ctx, enc, &a.ff1, &self.acts.scratch.dff2, &self.acts.scratch.dff1)?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Fc, &a.h2, &self.acts.scratch.dff1, Some((&self.acts.scratch.dh, 0.0)))?;
                }
                GpuMlp::SwiGlu { .. } => {
                    self.linear_backward(ctx, enc, acc, l, b, Site::Down, &a.ff3, cur, Some((&self.acts.scratch.dff3, 0.0)))?;
                    gpu::silu_mul::encode_backward(ctx, enc, &a.ff1, &a.ff2, &self.acts.scratch.dff3, &self.acts.scratch.dff1, &self.acts.scratch.dff2)?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Gate, &a.h2, &self.acts.scratch.dff1, Some((&self.acts.scratch.dh, 0.0)))?;
                    self.linear_backward(ctx, enc, acc, l, b, Site::Up, &a.h2, &self.acts.scratch.dff2, Some((&self.acts.scratch.dh, 1.0)))?;
                }
            }
            b.mlp_norm.encode_backward(ctx, enc, c, &a.x_mid, &self.acts.scratch.dh, n, &self.acts.scratch.dtmp)?;
            gpu::add::encode(ctx, enc, cur, &self.acts.scratch.dtmp, other)?;
            std::mem::swap(&mut cur, &mut other);

            // Attention: x_mid = x_in + o(attention(q, k, v of attn_norm(x_in))).
            self.linear_backward(ctx, enc, acc, l, b, Site::O, &a.att, cur, Some((&self.acts.scratch.d_att, 0.0)))?;
            for s in 0..self.batch {
                copy_rows(enc, &a.q, s * t, &self.acts.window.qs, 0, t, qd);
                copy_rows(enc, &a.k, s * t, &self.acts.window.ks, 0, t, kvd);
                copy_rows(enc, &a.v, s * t, &self.acts.window.vs, 0, t, kvd);
                copy_rows(enc, &a.att, s * t, &self.acts.window.os, 0, t, qd);
                copy_rows(enc, &self.acts.scratch.d_att, s * t, &self.acts.window.dos, 0, t, qd);
                let w = &self.acts.window;
                gpu::attention::encode_backward(ctx, enc, &w.qs, &w.ks, &w.vs, &w.os, &a.lse[s], &w.dos, &w.dqs, &w.dks, &w.dvs, &w.delta, t, &heads)?;
                copy_rows(enc, &self.acts.window.dqs, 0, &self.acts.scratch.dq, s * t, t, qd);
                copy_rows(enc, &self.acts.window.dks, 0, &self.acts.scratch.dk, s * t, t, kvd);
                copy_rows(enc, &self.acts.window.dvs, 0, &self.acts.scratch.dv, s * t, t, kvd);
            }
            if c.arch == Arch::Llama {
                let (dq, dk) = (&self.acts.scratch.dq, &self.acts.scratch.dk);
                gpu::rope::encode_backward_batched(ctx, enc, &[(dq, c.num_heads), (dk, c.num_kv_heads)], self.batch, t, c.head_dim, c.rope_theta)?;
            }
            // The first block's input gradient would only reach the (frozen) embeddings.
            let first = l == 0;
            let dx = |beta| if first { None } else { Some((&self.acts.scratch.dh, beta)) };
            self.linear_backward(ctx, enc, acc, l, b, Site::Q, &a.h1, &self.acts.scratch.dq, dx(0.0))?;
            self.linear_backward(ctx, enc, acc, l, b, Site::K, &a.h1, &self.acts.scratch.dk, dx(1.0))?;
            self.linear_backward(ctx, enc, acc, l, b, Site::V, &a.h1, &self.acts.scratch.dv, dx(1.0))?;
            if !first {
                b.attn_norm.encode_backward(ctx, enc, c, self.x_in(l), &self.acts.scratch.dh, n, &self.acts.scratch.dtmp)?;
                gpu::add::encode(ctx, enc, cur, &self.acts.scratch.dtmp, other)?;
                std::mem::swap(&mut cur, &mut other);
            }
        }
        Ok(())
    }

    /// Block `l`'s forward again from its kept input, into the shared layer set (checkpointing).
    fn encode_recompute(&self, ctx: &GpuContext, enc: &mut Recorder, model: &GpuModel, l: usize) -> Result<(), GpuError> {
        let (c, b, a, n) = (&model.config, &model.blocks[l], self.layer(l), self.rows);
        // h1 exactly as the forward made it: block 0's by the norm alone, later blocks' by the
        // previous block's fused residual + norm, here with a zero residual (x + 0 = x, and the
        // same arithmetic after it; the plain norm's reduction may round differently).
        if l == 0 {
            b.attn_norm.encode(ctx, enc, c, self.x_in(0), n, &a.h1)?;
        } else {
            let zero = &self.acts.scratch.proj;
            enc.clear_buffer(&zero.buffer);
            b.attn_norm.encode_residual(ctx, enc, c, self.x_in(l), zero, &a.x_mid, n, &a.h1)?;
        }
        let next_norm = model.blocks.get(l + 1).map_or(&model.final_norm, |nb| &nb.attn_norm);
        self.recomputing.set(true);
        let result = block::encode_block(ctx, enc, c, l, b, Some(next_norm), self);
        self.recomputing.set(false);
        result
    }

    fn encode_update(&self, ctx: &GpuContext, enc: &mut Recorder, opt: &AdamW, step: u32, grad_scale: f32) -> Result<(), GpuError> {
        let mut slots = Vec::new();
        for m in &self.lora.modules {
            let trainable = m.parts.iter().zip(&m.frozen).filter(|(_, &f)| !f).map(|((_, p), _)| p);
            for p in std::iter::once(&m.a).chain(trainable) {
                slots.push(gpu::adamw::Slot { param: &p.value, grad: &p.grad, m: &p.m, v: &p.v });
            }
        }
        gpu::adamw::encode(ctx, enc, &slots, &self.status, opt, step, grad_scale)
    }
}

/// Whether AdamW's flag, as read back, says an update was refused.
pub(crate) fn refused(status: &[f32]) -> bool {
    status.first().is_some_and(|s| s.to_bits() != 0)
}

/// The trainer's side of the one network (`model::block`): every block keeps its own activations
/// (or, checkpointing, its input, the rest in one shared set),
/// projections add the adapter, and attention runs window by window with positions t mod T,
/// keeping each window's row logsumexp for the backward.
impl Pass for Trainer {
    fn rows(&self) -> usize {
        self.rows
    }

    fn ids(&self) -> (&GpuTensor, &GpuTensor) {
        (&self.acts.rows.ids, &self.acts.rows.pos_ids)
    }

    fn embedded(&self) -> &GpuTensor {
        self.x_in(0)
    }

    fn hidden(&self) -> &GpuTensor {
        &self.acts.rows.hf
    }

    fn acts(&self, l: usize) -> BlockActs<'_> {
        let a = self.layer(l);
        // A recomputed block must not overwrite what its backward still reads (with checkpointing
        // the next h1 is this block's own h1): its output and the next norm go to x_final and hf,
        // whose last readers (the final norm's backward, the LM head) ran before.
        let (x_out, h_out) = if self.recomputing.get() {
            (&self.acts.rows.x_final, &self.acts.rows.hf)
        } else {
            let h_out = if l + 1 < self.acts.inputs.len() { &self.layer(l + 1).h1 } else { &self.acts.rows.hf };
            (self.x_in(l + 1), h_out)
        };
        BlockActs {
            x_in: self.x_in(l),
            h1: &a.h1,
            q: &a.q,
            k: &a.k,
            v: &a.v,
            att: &a.att,
            proj: &self.acts.scratch.proj,
            x_mid: &a.x_mid,
            h2: &a.h2,
            ff1: &a.ff1,
            ff2: &a.ff2,
            ff3: &a.ff3,
            x_out,
            h_out,
        }
    }

    /// y = frozen layer (+ its adapter part, if any) of x.
    fn project(&self, ctx: &GpuContext, enc: &mut Recorder, l: usize, block: &GpuBlock, site: Site, x: &GpuTensor, y: &GpuTensor) -> Result<(), GpuError> {
        let lin = site.linear(block).expect("the site exists in this architecture");
        let n = self.rows;
        lin.encode(ctx, enc, x, n, y)?;
        if !self.adapter_on.get() {
            return Ok(());
        }
        if let Some(&(m, p)) = self.lora.index.get(&(l, site)) {
            // Dropout applies to the x that u = x·Aᵀ reads, once per module (at its first part).
            let x = if p == 0 { self.dropped(ctx, enc, m, x)? } else { x };
            self.lora.encode_part(ctx, enc, m, p, x, n, &self.acts.lora.u[m], y)?;
        }
        Ok(())
    }

    fn attend(&self, ctx: &GpuContext, enc: &mut Recorder, c: &Config, l: usize, a: &BlockActs) -> Result<(), GpuError> {
        let (t, qd, kvd) = (self.seq, c.q_dim(), c.kv_dim());
        if c.arch == Arch::Llama {
            gpu::rope::encode_batched(ctx, enc, &[(a.q, c.num_heads), (a.k, c.num_kv_heads)], self.batch, t, c.head_dim, c.rope_theta)?;
        }
        let (w, heads) = (&self.acts.window, heads(c));
        for s in 0..self.batch {
            copy_rows(enc, a.q, s * t, &w.qs, 0, t, qd);
            copy_rows(enc, a.k, s * t, &w.ks, 0, t, kvd);
            copy_rows(enc, a.v, s * t, &w.vs, 0, t, kvd);
            gpu::attention::encode(ctx, enc, &w.qs, &w.ks, &w.vs, &w.os, &self.layer(l).lse[s], t, 0, &heads)?;
            copy_rows(enc, &w.os, 0, a.att, s * t, t, qd);
        }
        Ok(())
    }
}
