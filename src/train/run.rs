//! The training loop. [`Session::new`] and [`Session::step`] read top to bottom as the whole recipe:
//!
//! text tokens → windows and a held-out split ([`Dataset`]) → per optimizer step, k micro-batches of
//! B windows drawn with the seed, each run forward → loss → backward with its gradients summed in the
//! adapter's grad buffers → global-norm clipping of the mean gradient → AdamW at the schedule's
//! learning rate → every N steps one read-back of the mean loss since the last read.
//!
//! Clipping: the sum of squares of every trainable LoRA gradient is reduced on the GPU
//! (`gpu::sum_squares`, one value per tensor into one small buffer), and that buffer — P floats — is
//! read back each step; the CPU takes norm = √Σ / k (the norm of the mean gradient) and passes
//! grad_scale = min(1, max_norm / norm) / k to AdamW, which applies it to the summed gradients. That
//! read-back is one synchronisation per step (the loss is not read then); computing the scale on the
//! GPU would need AdamW to read it from a buffer, which it does not yet. The norm is read even with
//! `max_grad_norm: None`: a non-finite norm means the step diverged, and it is then not applied.
//!
//! An update can overflow with finite gradients (a learning rate like 1e38: lr / (1 − β1^t) is ∞ in
//! f32). AdamW is all or nothing (`gpu::adamw`): it writes nothing when any new value of any tensor
//! would be ±∞ or NaN, and sets a flag. The flag is not read on its own (that would be a second
//! wait per step): it is copied beside the squares and read with the next step's norm, or with the
//! loss when this step reads it (always on the last step), or by [`Session::validate`]. Found set,
//! the refused step is taken back (step count and AdamW step; the adapter and moments were never
//! written) and the run stops with [`TrainError::UpdateOverflow`]. Until then [`Session::state`]
//! already leaves the refused step out, so what is saved resumes exactly.
//!
//! Instruction tuning ([`Session::with_data`] on [`Dataset::from_examples`]): the same loop on
//! padded examples with labels; each micro-batch's loss is the mean over its learnt positions (the
//! answers), and the k micro-batches of a step weigh equally (their mean gradient), as
//! transformers' Trainer did before it counted tokens across accumulation. Validation is the mean
//! loss over the held-out examples' learnt positions.
//!
//! Keeping the best adapter ([`Session::validate`]): each validation that scores lower than every
//! one before it (the first included, so an untrained adapter counts) copies the adapter and its
//! training state to the host as [`Best`]; [`Session::stop_early`] says when `patience`
//! validations in a row have not improved on it.
//!
//! Schedule ([`Schedule`]): linear warmup, then cosine (default) or linear decay to 0 at the end.
//! Everything random comes from the seed, so a run is reproducible; a resumed run (adapter + AdamW
//! moments + step from [`TrainingState`]) fast-forwards the batch sampler and continues exactly.

use std::collections::HashMap;

use super::data::{Dataset, Sampler};
use super::{GpuLora, Site, TrainError, Trainer, TrainerOptions};
use crate::eval::{self, EvalResult};
use crate::gpu::{self, adamw::AdamW, GpuContext, GpuTensor};
use crate::lora::{Adapter, LoraOptions};
use crate::model::{load_safetensors, Config, GpuModel, HostTensor};

/// How the learning rate falls after the warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Decay {
    #[default]
    Cosine,
    Linear,
    Constant,
}

/// Linear warmup then decay, over `total` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub peak: f32,
    pub warmup: usize,
    pub total: usize,
    pub decay: Decay,
}

impl Schedule {
    /// The learning rate of optimizer step `step` (counting from 1). With s = step − 1: during the
    /// warmup (s < warmup) peak·(s + 1)/warmup, so the last warmup step reaches the peak; after it,
    /// with p = (s − warmup)/(total − warmup) ∈ [0, 1): cosine peak·½(1 + cos πp), linear
    /// peak·(1 − p), constant peak. (Transformers' schedules, shifted by one step so the first step
    /// does not have a learning rate of 0.)
    pub fn lr(&self, step: usize) -> f32 {
        let s = step.saturating_sub(1);
        if s < self.warmup {
            return self.peak * (s + 1) as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let p = ((s - self.warmup) as f64 / span as f64).min(1.0);
        let f = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
            Decay::Linear => 1.0 - p,
            Decay::Constant => 1.0,
        };
        (self.peak as f64 * f) as f32
    }
}

/// Everything about a training run except the adapter's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Optimizer steps of the whole run (a resumed run continues up to this).
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Windows per micro-batch.
    pub batch: usize,
    /// Tokens per window.
    pub seq_len: usize,
    pub warmup: usize,
    pub decay: Decay,
    /// Micro-batches per optimizer step (their gradients are summed, then scaled by 1/k).
    pub grad_accum: usize,
    /// Global gradient-norm clipping (None: off).
    pub max_grad_norm: Option<f32>,
    /// AdamW's decoupled weight decay (0, as transformers' Trainer).
    pub weight_decay: f32,
    /// Read the loss back every this many steps.
    pub log_every: usize,
    /// Batch sampling seed.
    pub seed: u64,
    /// Gradient checkpointing: keep only each block's input from the forward and recompute the
    /// rest block by block in the backward (about one more forward of compute for activations that
    /// no longer grow with the number of layers beyond one [tokens, hidden] tensor each; identical
    /// gradients).
    pub grad_checkpoint: bool,
    /// GPU memory the run may use, in bytes: a run whose [`memory::estimate`](super::memory::estimate)
    /// is above it is refused before anything is allocated ([`memory::check`](super::memory::check)).
    /// None: no limit.
    pub max_memory: Option<u64>,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            steps: 200,
            lr: 1e-3,
            batch: 4,
            seq_len: 128,
            warmup: 0,
            decay: Decay::Cosine,
            grad_accum: 1,
            max_grad_norm: Some(1.0),
            weight_decay: 0.0,
            log_every: 10,
            seed: 0,
            grad_checkpoint: false,
            max_memory: None,
        }
    }
}

fn invalid(setting: &'static str, message: String) -> TrainError {
    TrainError::InvalidSetting { setting, message }
}

impl TrainSettings {
    /// Check every setting against the model; each problem is one sentence.
    pub fn validate(&self, model: &Config) -> Result<(), TrainError> {
        if self.steps == 0 {
            return Err(invalid("steps", "the number of training steps must be at least 1".into()));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid("lr", format!("the learning rate must be a positive number, got {}", self.lr)));
        }
        if self.batch == 0 {
            return Err(invalid("batch", "the batch size must be at least 1 window".into()));
        }
        if self.seq_len < 2 || self.seq_len > model.max_positions {
            return Err(invalid(
                "seq_len",
                format!(
                    "the sequence length must be between 2 and the model's context of {} tokens, got {}",
                    model.max_positions, self.seq_len
                ),
            ));
        }
        if self.grad_accum == 0 {
            return Err(invalid("grad_accum", "gradient accumulation needs at least 1 micro-batch per step".into()));
        }
        if self.warmup > self.steps {
            return Err(invalid("warmup", format!("the warmup ({} steps) is longer than the run ({} steps)", self.warmup, self.steps)));
        }
        if let Some(m) = self.max_grad_norm {
            if !(m.is_finite() && m > 0.0) {
                return Err(invalid("max_grad_norm", format!("the gradient-norm limit must be a positive number, got {m}")));
            }
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid("weight_decay", format!("weight decay must be 0 or more, got {}", self.weight_decay)));
        }
        if self.log_every == 0 {
            return Err(invalid("log_every", "the loss must be read every 1 or more steps".into()));
        }
        if self.max_memory == Some(0) {
            return Err(invalid("max_memory", "the GPU memory limit must be more than 0 bytes".into()));
        }
        Ok(())
    }

    /// The warmup when the user gives none: 5% of the run (the CLI's and the page's default).
    pub fn warmup_default(steps: usize) -> usize {
        steps / 20
    }

    pub fn schedule(&self) -> Schedule {
        Schedule { peak: self.lr, warmup: self.warmup, total: self.steps, decay: self.decay }
    }
}

/// Before resuming an adapter that has taken `done` steps: a run of `steps` must have some left,
/// or it would end before its first step.
pub fn check_resume(done: usize, steps: usize) -> Result<(), TrainError> {
    if done >= steps {
        return Err(TrainError::AlreadyTrained { done });
    }
    Ok(())
}

/// Check a new adapter's options (the sentences a user sees for rank 0 and friends).
pub fn validate_lora(opts: &LoraOptions) -> Result<(), TrainError> {
    if opts.rank == 0 {
        return Err(invalid("rank", "the LoRA rank must be at least 1".into()));
    }
    if !(opts.alpha.is_finite() && opts.alpha > 0.0) {
        return Err(invalid("alpha", format!("LoRA's alpha must be a positive number, got {}", opts.alpha)));
    }
    if opts.targets.is_empty() {
        return Err(invalid("targets", "choose at least one target layer (q, k, v, o, up, gate, down)".into()));
    }
    if !(0.0..1.0).contains(&opts.dropout) {
        return Err(invalid("dropout", format!("LoRA dropout is a probability below 1 (0 turns it off), got {}", opts.dropout)));
    }
    Ok(())
}

/// A new adapter on the GPU from user options ([`Adapter::from_options`]), with GPT-2's unchosen
/// q/k/v rows of c_attn frozen.
pub async fn new_lora(ctx: &GpuContext, model: &GpuModel, opts: &LoraOptions) -> Result<GpuLora, TrainError> {
    validate_lora(opts)?;
    let adapter = Adapter::from_options(&model.config, opts)?;
    let mut lora = GpuLora::new(ctx, model, &adapter).await?;
    let arch = model.config.arch;
    let frozen: Vec<Site> = opts.frozen(arch).into_iter().flat_map(|t| t.sites(arch)).collect();
    lora.freeze(&frozen);
    Ok(lora)
}

/// What one optimizer step reports.
/// Whether a validation loss has risen far above the run's starting one (by more than 1 nat and
/// half again): the learning rate is too high for this model and data.
pub fn diverging(start: f64, now: f64) -> bool {
    !now.is_finite() || (now > start + 1.0 && now > 1.5 * start)
}

/// What to tell the user when [`diverging`] says so.
pub const DIVERGING: &str = "the validation loss is rising far above where the run started: training is diverging. Stop and lower the learning rate (or enable gradient clipping, --max-grad-norm 1.0)";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Optimizer steps done, this one included.
    pub step: usize,
    pub lr: f32,
    /// Norm of the mean gradient before clipping.
    pub grad_norm: Option<f32>,
    /// Mean training loss of the steps since the last read (Some every `log_every` steps and at the end).
    pub loss: Option<f32>,
    /// Tokens run forward and backward in this step.
    pub tokens: usize,
}

/// The adapter at the lowest validation loss so far, copied to the host with what resuming it needs.
#[derive(Debug, Clone)]
pub struct Best {
    /// Optimizer steps the adapter had taken.
    pub step: usize,
    pub loss: f64,
    pub adapter: Adapter,
    pub state: TrainingState,
}

/// What one [`Session::validate`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    /// Optimizer steps taken when it was measured.
    pub step: usize,
    pub loss: f64,
    /// This validation is the new best.
    pub improved: bool,
    pub best_step: usize,
    pub best_loss: f64,
    /// Validations since the best one (0 when this is it).
    pub since_best: usize,
}

/// A training run on the GPU: the data, the trainer with its adapter, and the batch sampler.
pub struct Session {
    pub settings: TrainSettings,
    pub data: Dataset,
    pub trainer: Trainer,
    schedule: Schedule,
    sampler: Sampler,
    /// Clipping scratch: sum_squares partials, one result, and one Σg² per adapter tensor followed
    /// by a copy of AdamW's flag (read together).
    partials: GpuTensor,
    square: GpuTensor,
    squares: GpuTensor,
    /// The clipping recording's uniforms and bind groups (the same every step).
    norm_cache: std::sync::Arc<std::sync::Mutex<gpu::DispatchCache>>,
    /// The best adapter so far and the last validation (see [`Session::validate`]).
    best: Option<Best>,
    last_validation: Option<Validation>,
}

impl Session {
    /// Set up training `lora` on `tokens` (the whole text, tokenized once) with `settings`. If the
    /// adapter has taken steps already (resumed), the sampler skips the batches those steps drew.
    pub async fn new(
        ctx: &GpuContext,
        model: &GpuModel,
        tokens: Vec<u32>,
        lora: GpuLora,
        settings: TrainSettings,
    ) -> Result<Self, TrainError> {
        settings.validate(&model.config)?;
        let data = Dataset::new(tokens, settings.seq_len)?;
        Self::with_data(ctx, model, data, lora, settings).await
    }

    /// [`Session::new`] on a dataset already made: a text's ([`Dataset::new`]) or examples'
    /// ([`Dataset::from_examples`]), cut with `settings.seq_len`.
    pub async fn with_data(ctx: &GpuContext, model: &GpuModel, data: Dataset, lora: GpuLora, settings: TrainSettings) -> Result<Self, TrainError> {
        settings.validate(&model.config)?;
        if data.seq_len != settings.seq_len {
            return Err(invalid("seq_len", format!("the data was cut into windows of {} tokens, the settings say {}", data.seq_len, settings.seq_len)));
        }
        let mut sampler = data.sampler(settings.seed);
        sampler.skip(lora.step as usize * settings.grad_accum * settings.batch);
        let options = TrainerOptions { grad_checkpoint: settings.grad_checkpoint, ..TrainerOptions::default() };
        let mut trainer = Trainer::with_options(ctx, model, lora, settings.batch, settings.seq_len, options).await?;
        trainer.dropout_seed = settings.seed as u32 ^ (settings.seed >> 32) as u32;
        let tensors = trainable(&trainer.lora);
        let all_tensors: usize = trainer.lora.modules.iter().map(|m| 1 + m.parts.len()).sum();
        let work = tensors.iter().map(|t| gpu::sum_squares::workspace_len(t.len())).max().unwrap_or(1);
        Ok(Self {
            schedule: settings.schedule(),
            partials: ctx.zeros(&[work]).await?,
            square: ctx.zeros(&[1]).await?,
            // One slot per adapter tensor, frozen ones included, so `memory::estimate` needs no
            // knowledge of which B rows are frozen; the last slot is AdamW's flag.
            squares: ctx.zeros(&[all_tensors + 1]).await?,
            norm_cache: gpu::DispatchCache::new(),
            settings,
            data,
            trainer,
            sampler,
            best: None,
            last_validation: None,
        })
    }

    /// Uniform buffers and bind groups made so far by the step's recordings: constant after the
    /// first step (see `gpu::DispatchCache`).
    pub fn dispatch_objects_created(&self) -> usize {
        self.trainer.dispatch_objects_created() + self.norm_cache.lock().unwrap().created
    }

    /// Optimizer steps taken so far (including those of a resumed adapter).
    pub fn steps_done(&self) -> usize {
        self.trainer.lora.step as usize
    }

    /// True once `settings.steps` steps are done.
    pub fn finished(&self) -> bool {
        self.steps_done() >= self.settings.steps
    }

    /// One optimizer step: the whole loop body.
    pub async fn step(&mut self, ctx: &GpuContext, model: &GpuModel) -> Result<StepReport, TrainError> {
        let s = self.settings.clone();
        let k = s.grad_accum;
        // 1. k micro-batches: forward → loss → backward; their gradients add up in the grad buffers.
        for micro in 0..k {
            let (tokens, labels) = self.sampler.next_labeled_batch(&self.data, s.batch);
            self.trainer.accumulate_labeled(ctx, model, &tokens, labels.as_deref(), micro > 0).await?;
        }
        // 2. The mean gradient's global norm (Σ / k), read with AdamW's flag for the last step's
        // update. An update that would have written ±∞ or NaN (a learning rate so large that it
        // overflows) wrote nothing: that step is taken back, and the run stops here.
        let (squares, status) = self.gradient_norm(ctx).await?;
        self.refuse_update(ctx, &status)?;
        let step = self.steps_done() + 1;
        let norm = squares / k as f32;
        // A NaN or ∞ anywhere in the gradients makes the norm non-finite, and then the step is not
        // applied, so the adapter stays the last good one. Clip it to max_grad_norm when set.
        if !norm.is_finite() {
            return Err(TrainError::NonFinite { step, clipping: s.max_grad_norm.is_some() });
        }
        let clip = match s.max_grad_norm {
            Some(max) if norm > max => max / norm,
            _ => 1.0,
        };
        let grad_norm = Some(norm);
        // 3. AdamW at this step's learning rate, on the summed gradients · clip / k (all or nothing).
        let lr = self.schedule.lr(step);
        let opt = AdamW { lr, weight_decay: s.weight_decay, ..AdamW::default() };
        self.trainer.update(ctx, &opt, clip / k as f32).await?;
        // 4. Every N steps (and at the end), read back the mean loss of the batches since the last
        // read, and with it the flag of this step's update: the last step is never left unchecked.
        let loss = if step % s.log_every == 0 || step >= s.steps {
            let (loss, status) = self.trainer.read_loss_and_status(ctx).await?;
            self.refuse_update(ctx, &status)?;
            Some(loss)
        } else {
            None
        };
        Ok(StepReport { step, lr, grad_norm, loss, tokens: k * s.batch * s.seq_len })
    }

    /// If AdamW's flag (`status`, as read back) says the last update was refused: take its step back
    /// (the adapter and moments were never written) and say what to change.
    fn refuse_update(&mut self, ctx: &GpuContext, status: &[f32]) -> Result<(), TrainError> {
        match self.trainer.take_refusal(ctx, status) {
            Some(step) => Err(TrainError::UpdateOverflow { step, lr: self.schedule.lr(step), clipping: self.settings.max_grad_norm.is_some() }),
            None => Ok(()),
        }
    }

    /// Settle the last update before anything reads the adapter's step: the flag is read (one tiny
    /// read-back, at validation points only, never per step) and a refused update taken back.
    async fn settle(&mut self, ctx: &GpuContext) -> Result<(), TrainError> {
        let status = ctx.read(self.trainer.status()).await?;
        self.refuse_update(ctx, &status)
    }

    /// √(Σ g²) over every trainable gradient tensor (one sum_squares per tensor on the GPU), and
    /// AdamW's flag copied beside the squares: one read for both.
    async fn gradient_norm(&self, ctx: &GpuContext) -> Result<(f32, Vec<f32>), TrainError> {
        let tensors = trainable(&self.trainer.lora);
        let flag_at = 4 * (self.squares.len() - 1) as u64;
        ctx.run_cached(&self.norm_cache, |enc| {
            for (i, g) in tensors.iter().enumerate() {
                gpu::sum_squares::encode(ctx, enc, g, &self.partials, &self.square)?;
                enc.copy_buffer_to_buffer(&self.square.buffer, 0, &self.squares.buffer, 4 * i as u64, 4);
            }
            enc.copy_buffer_to_buffer(&self.trainer.status().buffer, 0, &self.squares.buffer, flag_at, 4);
            Ok(())
        })
        .await?;
        let mut squares = ctx.read(&self.squares).await?;
        let status = squares.split_off(squares.len() - 1);
        Ok((squares.iter().map(|&x| x as f64).sum::<f64>().sqrt() as f32, status))
    }

    /// `eval`'s loss of `tokens` with the adapter as it is now (chunks of `seq_len`, each on its own).
    pub async fn eval_tokens(&self, ctx: &GpuContext, model: &GpuModel, tokens: &[u32]) -> Result<EvalResult, TrainError> {
        let chunks: Vec<(&[u32], &[u32])> = eval::chunks(tokens, self.settings.seq_len).map(|c| (c, c)).collect();
        self.eval_labeled(ctx, model, &chunks).await
    }

    /// The validation loss: `eval`'s loss of the held-out span, or for examples the mean loss of
    /// the held-out examples' learnt positions.
    pub async fn validation_loss(&self, ctx: &GpuContext, model: &GpuModel) -> Result<f64, TrainError> {
        match &self.data.examples {
            None => Ok(self.eval_tokens(ctx, model, self.data.validation_tokens()).await?.loss),
            Some(ex) => Ok(self.eval_examples(ctx, model, &ex.validation).await?.loss),
        }
    }

    /// The validation loss now, remembered: when it is lower than every validation before it (or
    /// the first), the adapter and its training state are copied to the host as [`Session::best`].
    /// A second call at the same step measures nothing again.
    pub async fn validate(&mut self, ctx: &GpuContext, model: &GpuModel) -> Result<Validation, TrainError> {
        self.settle(ctx).await?;
        let step = self.steps_done();
        if let Some(v) = self.last_validation.filter(|v| v.step == step) {
            return Ok(v);
        }
        let loss = self.validation_loss(ctx, model).await?;
        let improved = self.best.as_ref().is_none_or(|b| loss < b.loss);
        if improved {
            let (adapter, state) = (self.adapter(ctx).await?, self.state(ctx).await?);
            self.best = Some(Best { step, loss, adapter, state });
        }
        let best = self.best.as_ref().expect("set above at the latest");
        let since_best = if improved { 0 } else { self.last_validation.map_or(0, |v| v.since_best) + 1 };
        let v = Validation { step, loss, improved, best_step: best.step, best_loss: best.loss, since_best };
        self.last_validation = Some(v);
        Ok(v)
    }

    /// The adapter at the lowest validation loss so far (None before the first [`Session::validate`]).
    pub fn best(&self) -> Option<&Best> {
        self.best.as_ref()
    }

    /// The last [`Session::validate`]'s result.
    pub fn last_validation(&self) -> Option<Validation> {
        self.last_validation
    }

    /// Early stopping: true once `patience` validations in a row have not improved on the best
    /// (never for a patience of 0).
    pub fn stop_early(&self, patience: usize) -> bool {
        patience > 0 && self.last_validation.is_some_and(|v| v.since_best >= patience)
    }

    /// The mean loss of `examples`' learnt positions with the adapter as it is now (each example
    /// on its own, cut to `seq_len`); `tokens` counts those positions.
    pub async fn eval_examples(&self, ctx: &GpuContext, model: &GpuModel, examples: &[super::Example]) -> Result<EvalResult, TrainError> {
        let t = self.settings.seq_len;
        let cut: Vec<(&[u32], &[u32])> = examples.iter().filter(|e| e.ids.len() >= 2).map(|e| (&e.ids[..e.ids.len().min(t)], &e.labels[..e.labels.len().min(t)])).collect();
        self.eval_labeled(ctx, model, &cut).await
    }

    /// Mean cross-entropy over the learnt positions of (ids, labels) chunks, `batch` at a time.
    async fn eval_labeled(&self, ctx: &GpuContext, model: &GpuModel, chunks: &[(&[u32], &[u32])]) -> Result<EvalResult, TrainError> {
        let (mut sum, mut count) = (0.0, 0);
        for group in chunks.chunks(self.settings.batch) {
            let (s, n) = self.trainer.loss_sum_labeled(ctx, model, group).await?;
            sum += s;
            count += n;
        }
        if count == 0 {
            return Err(crate::model::ModelError::EmptyText.into());
        }
        let loss = sum / count as f64;
        Ok(EvalResult { loss, ppl: loss.exp(), tokens: count })
    }

    /// The adapter as trained so far, in PEFT's layout.
    pub async fn adapter(&self, ctx: &GpuContext) -> Result<Adapter, TrainError> {
        Ok(self.trainer.lora.to_adapter(ctx).await?)
    }

    /// AdamW's moments, the step count and the frozen sites, to resume from.
    /// A refused update that `step` or `validate` has not taken back yet wrote nothing, so its step
    /// does not count here either.
    pub async fn state(&self, ctx: &GpuContext) -> Result<TrainingState, TrainError> {
        let mut state = TrainingState::read(ctx, &self.trainer.lora).await?;
        if self.trainer.update_refused(ctx).await? {
            state.step -= 1;
        }
        Ok(state)
    }
}

/// Every trainable gradient tensor: each module's dA and its unfrozen dB parts.
fn trainable(lora: &GpuLora) -> Vec<&GpuTensor> {
    let mut out = Vec::new();
    for m in &lora.modules {
        out.push(&m.a.grad);
        for ((_, p), &frozen) in m.parts.iter().zip(&m.frozen) {
            if !frozen {
                out.push(&p.grad);
            }
        }
    }
    out
}

/// AdamW's first (`exp_avg`) or second (`exp_avg_sq`) moment of `p`.
fn moment<'p>(p: &'p super::Param, which: &str) -> &'p GpuTensor {
    if which == "exp_avg" { &p.m } else { &p.v }
}

/// What resuming needs besides the adapter (`training_state.safetensors`): AdamW's first and second
/// moments of every A and B (keys `<module>.lora_A.exp_avg` / `.exp_avg_sq`, same for lora_B, in
/// PEFT's shapes), and in the metadata the optimizer step and the frozen sites.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingState {
    pub step: u32,
    pub frozen: Vec<Site>,
    pub moments: HashMap<String, HostTensor>,
}

impl TrainingState {
    async fn read(ctx: &GpuContext, lora: &GpuLora) -> Result<Self, TrainError> {
        let mut moments = HashMap::new();
        for m in &lora.modules {
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let get = |p| moment(p, suffix);
                let a = ctx.read(get(&m.a)).await?;
                moments.insert(format!("{}.lora_A.{suffix}", m.name), HostTensor::new(a, vec![m.rank, m.in_dim]));
                let (mut b, mut rows) = (Vec::new(), 0);
                for (_, p) in &m.parts {
                    b.extend(ctx.read(get(p)).await?);
                    rows += p.value.shape[0];
                }
                moments.insert(format!("{}.lora_B.{suffix}", m.name), HostTensor::new(b, vec![rows, m.rank]));
            }
        }
        Ok(Self { step: lora.step, frozen: lora.frozen_sites(), moments })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let mut names: Vec<&String> = self.moments.keys().collect();
        names.sort();
        let bytes: Vec<&[u8]> = names.iter().map(|n| bytemuck::cast_slice(&self.moments[*n].data)).collect();
        let views = names
            .iter()
            .zip(&bytes)
            .map(|(n, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, self.moments[*n].shape.clone(), b)
                    .map(|v| (n.to_string(), v))
                    .map_err(|e| TrainError::State(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let frozen: Vec<&str> = self.frozen.iter().map(|&s| s.name()).collect();
        let (step, frozen) = (self.step.to_string(), frozen.join(","));
        crate::model::serialize_views(views, &[("format", "pt"), ("step", &step), ("frozen", &frozen)]).map_err(TrainError::State)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrainError> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| TrainError::State(e.to_string()))?;
        let meta = meta.metadata().clone().unwrap_or_default();
        let step = meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| TrainError::State("it has no step count".into()))?;
        let frozen = meta
            .get("frozen")
            .map(|f| f.split(',').filter(|s| !s.is_empty()).map(|s| Site::from_name(s).ok_or_else(|| TrainError::State(format!("unknown site `{s}`")))).collect())
            .transpose()?
            .unwrap_or_default();
        let moments = load_safetensors("training_state.safetensors", bytes)?;
        Ok(Self { step, frozen, moments })
    }

    /// Put the moments, step and frozen sites into `lora` (the adapter loaded from the same folder).
    pub fn apply(&self, ctx: &GpuContext, lora: &mut GpuLora) -> Result<(), TrainError> {
        lora.freeze(&self.frozen);
        for m in &lora.modules {
            for suffix in ["exp_avg", "exp_avg_sq"] {
                let get = |p| &moment(p, suffix).buffer;
                let find = |key: String, shape: Vec<usize>| -> Result<&HostTensor, TrainError> {
                    let t = self.moments.get(&key).ok_or_else(|| TrainError::State(format!("`{key}` is missing: it belongs to another adapter")))?;
                    if t.shape != shape {
                        return Err(TrainError::State(format!("`{key}` has shape {:?}, the adapter needs {shape:?}", t.shape)));
                    }
                    Ok(t)
                };
                let a = find(format!("{}.lora_A.{suffix}", m.name), vec![m.rank, m.in_dim])?;
                ctx.queue.write_buffer(&get(&m.a), 0, bytemuck::cast_slice(&a.data));
                let rows: usize = m.parts.iter().map(|(_, p)| p.value.shape[0]).sum();
                let b = find(format!("{}.lora_B.{suffix}", m.name), vec![rows, m.rank])?;
                let mut row0 = 0;
                for (_, p) in &m.parts {
                    let n = p.value.shape[0];
                    ctx.queue.write_buffer(&get(p), 0, bytemuck::cast_slice(&b.data[row0 * m.rank..(row0 + n) * m.rank]));
                    row0 += n;
                }
            }
        }
        lora.step = self.step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file is the same bytes however often it is written and after a round trip (the
    /// metadata once came out in a HashMap's order, which differs from one map to the next).
    #[test]
    fn divergence_is_a_large_rise() {
        assert!(!diverging(3.0, 3.5) && !diverging(3.0, 2.0) && !diverging(0.5, 1.4));
        assert!(diverging(3.0, 4.6) && diverging(0.5, 1.6) && diverging(3.0, f64::NAN));
    }

    #[test]
    fn training_state_bytes_are_stable() {
        let tensor = |seed: f32| HostTensor::new((0..12).map(|i| seed + i as f32 * 0.25).collect(), vec![3, 4]);
        let state = TrainingState {
            step: 8,
            frozen: vec![Site::K],
            moments: HashMap::from([("a.m".to_string(), tensor(1.0)), ("a.v".to_string(), tensor(2.0)), ("b.m".to_string(), tensor(3.0))]),
        };
        let first = state.to_bytes().unwrap();
        for _ in 0..20 {
            assert_eq!(state.to_bytes().unwrap(), first);
        }
        let back = TrainingState::from_bytes(&first).unwrap();
        assert_eq!((back.step, back.frozen.clone()), (8, vec![Site::K]));
        assert_eq!(back.moments["b.m"].data, tensor(3.0).data);
        assert_eq!(back.to_bytes().unwrap(), first);
        // Still a safetensors file any reader takes, its metadata intact.
        let (_, meta) = safetensors::SafeTensors::read_metadata(&first).unwrap();
        let meta = meta.metadata().as_ref().unwrap();
        assert_eq!((meta["step"].as_str(), meta["format"].as_str(), meta["frozen"].as_str()), ("8", "pt", "k"));
    }
}
