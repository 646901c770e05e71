//! `loratab train`: fine-tune a LoRA adapter on a text file and write it in PEFT's format.
//!
//! The loop itself is `train::Session::step`; this file only wires files, the progress bar,
//! validation, checkpoints and Ctrl-C around it. The adapter is written at the end, every
//! `--save-every` steps, and when Ctrl-C stops the run (after the step in flight), together with
//! `training_state.safetensors` (AdamW's moments and the step) so `--resume DIR` continues exactly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use loratab::gpu::GpuContext;
use loratab::lora::{Adapter, Init, LoraError, LoraOptions, Target};
use loratab::model::{Config, GpuModel, ModelError, WeightFormat};
use loratab::train::{self, memory, Decay, GpuLora, Session, TrainError, TrainSettings, TrainingState};

const STATE_FILE: &str = "training_state.safetensors";

#[derive(Clone, Copy, ValueEnum)]
pub enum DecayArg {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum InitArg {
    /// PEFT's default: A ~ U(−1/√in, 1/√in), B = 0.
    Kaiming,
    /// A ~ N(0, σ = 1/r), B = 0.
    Gaussian,
}

#[derive(Args)]
pub struct TrainArgs {
    /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or a llama .gguf
    /// file (the adapter is then for the model it dequantizes to); default: the embedded austen-5m.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Keep the frozen weights in this format on the GPU: f32, f16, bf16, q8_0, q4_0 or q4_1
    /// (default: as the file stores them; quantizing trains the adapter for the quantized model).
    #[arg(long, value_parser = crate::model_arg::parse_format)]
    base_dtype: Option<WeightFormat>,
    /// The text to train on (the last ~10% of its windows are held out for validation).
    #[arg(long)]
    text: PathBuf,
    /// Where to write the adapter (adapter_config.json, adapter_model.safetensors, training_state.safetensors).
    #[arg(long)]
    out: PathBuf,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (scale = alpha / rank, or alpha / √rank with --rslora).
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Layers to adapt, comma-separated, among q,k,v,o,up,gate,down (GPT-2: q/k/v share c_attn, no gate).
    #[arg(long, default_value = "q,v")]
    targets: String,
    /// Per-target ranks, e.g. `o=4,up=16` (PEFT's rank_pattern).
    #[arg(long)]
    rank_pattern: Option<String>,
    /// Rank-stabilised LoRA: scale = alpha / √rank.
    #[arg(long)]
    rslora: bool,
    /// LoRA dropout: probability of zeroing each adapter input while training (0 = off).
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, value_enum, default_value = "kaiming")]
    init: InitArg,
    /// Optimizer steps of the whole run (a resumed run continues up to this).
    #[arg(long, default_value_t = 200)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Windows per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Tokens per window (default: the model's context, at most 128).
    #[arg(long)]
    seq_len: Option<usize>,
    /// Seed of the adapter's initialisation and of batch sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue training the adapter in this folder (with its training_state.safetensors if present).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Linear warmup steps (default: 5% of --steps).
    #[arg(long)]
    warmup: Option<usize>,
    #[arg(long, value_enum, default_value = "cosine")]
    decay: DecayArg,
    /// Micro-batches per optimizer step (gradients summed, then averaged).
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Clip the gradient's global norm to this (0 = no clipping).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// Gradient checkpointing: keep only each block's input and recompute the rest in the backward
    /// (less GPU memory, about a third more compute, identical results).
    #[arg(long)]
    grad_checkpoint: bool,
    /// Read the training loss back every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Compute the validation loss every N steps (0 = only at the start and the end).
    #[arg(long, default_value_t = 50)]
    eval_every: usize,
    /// Write the adapter every N steps (0 = only at the end or on Ctrl-C).
    #[arg(long, default_value_t = 0)]
    save_every: usize,
}

/// What `train` can fail with, as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum TrainCliError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Open(#[from] crate::model_arg::OpenError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("{0}")]
    Usage(String),
}

impl From<loratab::gpu::GpuError> for TrainCliError {
    fn from(e: loratab::gpu::GpuError) -> Self {
        TrainError::from(e).into()
    }
}

fn rank_pattern(s: &str) -> Result<std::collections::BTreeMap<Target, usize>, TrainCliError> {
    let mut out = std::collections::BTreeMap::new();
    for item in s.split(',').filter(|x| !x.trim().is_empty()) {
        let (t, r) = item
            .split_once('=')
            .ok_or_else(|| TrainCliError::Usage(format!("--rank-pattern takes target=rank pairs like o=4, got `{item}`")))?;
        let r = r.trim().parse().map_err(|_| TrainCliError::Usage(format!("`{r}` in --rank-pattern is not a whole number")))?;
        out.insert(Target::parse(t)?, r);
    }
    Ok(out)
}

/// Write the adapter and the training state into `dir`.
async fn save(ctx: &GpuContext, session: &Session, base: &str, dir: &Path) -> Result<(), TrainCliError> {
    let mut adapter = session.adapter(ctx).await?;
    adapter.config.base_model_name_or_path = Some(base.to_string());
    let write_err = |e: std::io::Error| TrainError::Write { path: dir.display().to_string(), reason: e.to_string() };
    adapter.save_dir(dir).map_err(write_err)?;
    let state = session.state(ctx).await?.to_bytes()?;
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    std::fs::write(&tmp, state).and_then(|()| std::fs::rename(&tmp, dir.join(STATE_FILE))).map_err(write_err)?;
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<(), TrainCliError> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // If a handler cannot be installed, Ctrl-C simply ends the process as usual.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    pollster::block_on(train(args, stop))
}

async fn train(args: TrainArgs, stop: Arc<AtomicBool>) -> Result<(), TrainCliError> {
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| ModelError::Io { path: args.text.display().to_string(), reason: e.to_string() })?;
    let (model, tokenizer) = crate::model_arg::Source::open(args.model.as_deref())?.model(args.base_dtype)?;
    // Recorded in the adapter's config as PEFT's base_model_name_or_path.
    let base = crate::model_arg::base_name(args.model.as_deref());
    let tokens = tokenizer.encode(&text)?;
    let settings = settings(&args, &model.config);
    // Before the GPU starts, so a bad setting costs no device set-up.
    settings.validate(&model.config)?;
    let ctx = GpuContext::new().await.map_err(ModelError::from)?;
    let frozen = Frozen { bytes: memory::weights(&model, ctx.max_binding()), formats: crate::model_arg::formats(&model) };
    let gm = GpuModel::upload(&ctx, &model).await?;
    // The host copy is not needed again (the GPU holds the weights).
    drop(model);
    let lora = match &args.resume {
        Some(dir) => resume(&ctx, &gm, dir, settings.steps).await?,
        None => train::new_lora(&ctx, &gm, &lora_options(&args)?).await?,
    };
    let mut session = Session::new(&ctx, &gm, tokens, lora, settings).await?;
    let memory = report_memory(&ctx, &gm.config, &frozen, &session).await?;
    let run = train_loop(&ctx, &gm, &mut session, &args, &base, &stop).await?;
    save(&ctx, &session, &base, &args.out).await?;
    report(&ctx, &session, &args.out, &run, &memory);
    Ok(())
}

/// The run's settings from the flags (defaults shared with the page come from the library).
fn settings(args: &TrainArgs, model: &Config) -> TrainSettings {
    TrainSettings {
        steps: args.steps,
        lr: args.lr,
        batch: args.batch,
        seq_len: args.seq_len.unwrap_or(model.max_positions.min(128)),
        warmup: args.warmup.unwrap_or(TrainSettings::warmup_default(args.steps)),
        decay: match args.decay {
            DecayArg::Cosine => Decay::Cosine,
            DecayArg::Linear => Decay::Linear,
            DecayArg::Constant => Decay::Constant,
        },
        grad_accum: args.grad_accum,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        weight_decay: args.weight_decay,
        log_every: args.log_every,
        seed: args.seed,
        grad_checkpoint: args.grad_checkpoint,
    }
}

/// A new adapter's options from the flags.
fn lora_options(args: &TrainArgs) -> Result<LoraOptions, TrainCliError> {
    Ok(LoraOptions {
        rank: args.rank,
        alpha: args.alpha,
        rslora: args.rslora,
        targets: Target::parse_list(&args.targets)?,
        rank_override: args.rank_pattern.as_deref().map(rank_pattern).transpose()?.unwrap_or_default(),
        init: match args.init {
            InitArg::Kaiming => Init::Kaiming,
            InitArg::Gaussian => Init::Gaussian,
        },
        seed: args.seed,
        dropout: args.dropout,
    })
}

/// The adapter in `dir` on the GPU with its AdamW state (when saved), checked to have steps left.
async fn resume(ctx: &GpuContext, gm: &GpuModel, dir: &Path, steps: usize) -> Result<GpuLora, TrainCliError> {
    let adapter = Adapter::load_dir(dir)?;
    let mut lora = GpuLora::new(ctx, gm, &adapter).await?;
    match std::fs::read(dir.join(STATE_FILE)) {
        Ok(bytes) => TrainingState::from_bytes(&bytes)?.apply(ctx, &mut lora)?,
        Err(_) => eprintln!("note: {} has no {STATE_FILE}: AdamW starts afresh at step 0", dir.display()),
    }
    train::check_resume(lora.step as usize, steps).map_err(|e| match e {
        // The library's sentence, with the folder the user gave.
        TrainError::AlreadyTrained { done } => TrainCliError::Usage(format!(
            "the adapter in {} has already taken {done} steps: give --steps above that to train on",
            dir.display()
        )),
        e => e.into(),
    })?;
    Ok(lora)
}

/// The frozen weights' GPU bytes worked out before upload, and their formats ("q4_1 ×210, q8_0 ×1").
struct Frozen {
    bytes: u64,
    formats: String,
}

/// What training holds on the GPU: worked out from the shapes, and measured.
struct Memory {
    budget: memory::MemoryBudget,
    measured: u64,
    formats: String,
}

/// Print the GPU memory budget beside what is measured, so a wrong estimate shows.
async fn report_memory(ctx: &GpuContext, config: &Config, frozen: &Frozen, session: &Session) -> Result<Memory, TrainCliError> {
    let measured = ctx.memory().live();
    let budget = memory::estimate(frozen.bytes, config, &session.adapter(ctx).await?, &session.settings);
    eprintln!("frozen weights: {} ({})", memory::human(budget.weights), frozen.formats);
    eprintln!(
        "GPU memory: weights {} + activations {}{} + adapter {} + AdamW moments {} = {} (measured {})",
        memory::human(budget.weights),
        memory::human(budget.activations),
        if session.settings.grad_checkpoint { " with gradient checkpointing" } else { "" },
        memory::human(budget.adapter),
        memory::human(budget.optimizer),
        memory::human(budget.total()),
        memory::human(measured)
    );
    Ok(Memory { budget, measured, formats: frozen.formats.clone() })
}

/// How the loop ended.
struct LoopEnd {
    start: Instant,
    tokens_run: usize,
    /// The last training loss read back, and the last validation loss.
    loss: f32,
    val: f64,
    interrupted: bool,
}

/// Step until the run is finished or Ctrl-C is pressed, with the progress bar, validation every
/// `--eval-every` steps and checkpoints every `--save-every` steps.
async fn train_loop(
    ctx: &GpuContext,
    gm: &GpuModel,
    session: &mut Session,
    args: &TrainArgs,
    base: &str,
    stop: &AtomicBool,
) -> Result<LoopEnd, TrainCliError> {
    let s = session.settings.clone();
    let first = session.steps_done();
    let bar = ProgressBar::new(s.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .expect("a valid template"),
    );
    bar.set_position(first as u64);
    let mut val = session.validation_loss(ctx, gm).await?;
    bar.suspend(|| {
        eprintln!(
            "training {} tokens ({} windows of {}, {} held out) from step {first}; validation loss {val:.4}",
            session.data.tokens.len(),
            session.data.train_windows,
            s.seq_len,
            session.data.validation_windows
        )
    });
    let start = Instant::now();
    let (mut tokens_run, mut loss) = (0usize, f32::NAN);
    let mut interrupted = false;
    let start_val = val;
    while !session.finished() {
        let r = match session.step(ctx, gm).await {
            Ok(r) => r,
            // The step was not applied: keep what the run had learnt before it diverged.
            Err(e @ train::TrainError::NonFinite { .. }) => {
                bar.abandon();
                save(ctx, session, base, &args.out).await?;
                eprintln!("the adapter of step {} was saved to {}", session.steps_done(), args.out.display());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        tokens_run += r.tokens;
        if let Some(l) = r.loss {
            loss = l;
        }
        let at_eval = args.eval_every > 0 && r.step % args.eval_every == 0;
        if at_eval || session.finished() {
            val = session.validation_loss(ctx, gm).await?;
        }
        let rate = tokens_run as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {loss:.4} val {val:.4} lr {:.2e} {rate:.0} tok/s", r.lr));
        bar.set_position(r.step as u64);
        if at_eval {
            bar.suspend(|| eprintln!("step {}: loss {loss:.4}, validation loss {val:.4}, {rate:.0} tokens/s", r.step));
            if train::diverging(start_val, val) {
                bar.suspend(|| eprintln!("{}", train::DIVERGING));
            }
        }
        if args.save_every > 0 && r.step % args.save_every == 0 && !session.finished() {
            save(ctx, session, base, &args.out).await?;
        }
        // Checked after the step in flight, so what is saved is a whole step.
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    bar.finish_and_clear();
    Ok(LoopEnd { start, tokens_run, loss, val, interrupted })
}

/// Say where the adapter went (and how to continue an interrupted run), and print the run's
/// summary as one JSON line on stdout for scripts.
fn report(ctx: &GpuContext, session: &Session, out: &Path, run: &LoopEnd, memory: &Memory) {
    let done = session.steps_done();
    if run.interrupted {
        eprintln!("interrupted at step {done}: adapter saved to {} (continue with --resume {0})", out.display());
    } else {
        eprintln!("adapter saved to {}", out.display());
    }
    let budget = &memory.budget;
    let summary = serde_json::json!({
        "steps": done,
        "loss": run.loss,
        "val_loss": run.val,
        "tokens_per_s": run.tokens_run as f64 / run.start.elapsed().as_secs_f64().max(1e-9),
        "out": out.display().to_string(),
        "interrupted": run.interrupted,
        "gpu_memory": {
            "weights": budget.weights,
            "weight_formats": memory.formats,
            "activations": budget.activations,
            "adapter": budget.adapter,
            "optimizer": budget.optimizer,
            "budget": budget.total(),
            "measured": memory.measured,
            "peak": ctx.memory().peak(),
        },
    });
    println!("{summary}");
}

/// `loratab export-trl`: the run that `train`'s flags describe, written for PyTorch (TRL's
/// SFTTrainer + PEFT; `train::export`) instead of trained. `--out` is the export's folder;
/// `--resume DIR` starts it from that adapter (AdamW starts afresh), else from the fresh adapter
/// `train` would make with the same seed. For the embedded default model its three files go to
/// `base/` so the folder is complete.
pub fn export_trl(args: TrainArgs) -> Result<(), TrainCliError> {
    let (model, tokenizer) = crate::model_arg::Source::open(args.model.as_deref())?.model(args.base_dtype)?;
    let settings = settings(&args, &model.config);
    settings.validate(&model.config)?;
    let (records, template, answers_only) = export_examples(&args, &tokenizer)?;
    let (mut adapter, frozen) = match &args.resume {
        Some(dir) => {
            let frozen = match std::fs::read(dir.join(STATE_FILE)) {
                Ok(bytes) => TrainingState::from_bytes(&bytes)?.frozen,
                Err(_) => Vec::new(),
            };
            (Adapter::load_dir(dir)?, frozen)
        }
        None => {
            let opts = lora_options(&args)?;
            train::validate_lora(&opts)?;
            let arch = model.config.arch;
            let frozen = opts.frozen(arch).into_iter().flat_map(|t| t.sites(arch)).collect();
            (Adapter::from_options(&model.config, &opts)?, frozen)
        }
    };
    adapter.config.base_model_name_or_path = Some(crate::model_arg::base_name(args.model.as_deref()));
    let write = |name: &str, bytes: &[u8]| -> Result<(), TrainCliError> {
        let path = args.out.join(name);
        let err = |e: std::io::Error| TrainError::Write { path: path.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(path.parent().expect("inside --out")).map_err(err)?;
        std::fs::write(&path, bytes).map_err(err)?;
        Ok(())
    };
    let base = match &args.model {
        Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()).display().to_string(),
        None => {
            let files = loratab::model::default::files();
            write("base/config.json", files.config.as_bytes())?;
            write("base/tokenizer.json", &files.tokenizer)?;
            for (name, bytes) in &files.weights {
                write(&format!("base/{name}"), bytes)?;
            }
            "base".to_string()
        }
    };
    let frozen_rows = train::frozen_rows(&model.config, &adapter, &frozen);
    let run = train::TrlRun { records: &records, template: &template, answers_only, adapter: &adapter, settings: &settings, base_model: &base, frozen_rows: &frozen_rows };
    let files = train::trl_export(&tokenizer, &run).map_err(|e| TrainCliError::Usage(e.to_string()))?;
    for f in &files {
        write(&f.name, &f.bytes)?;
    }
    eprintln!("wrote {} ({} files); run it with: python {}", args.out.display(), files.len(), args.out.join(train::TRL_SCRIPT).display());
    Ok(())
}

/// PROVISIONAL until `train --data` lands: the examples, template and masking of the run.
fn export_examples(args: &TrainArgs, tok: &loratab::model::Tokenizer) -> Result<(Vec<(usize, train::Record)>, train::ChatTemplate, bool), TrainCliError> {
    let text = std::fs::read_to_string(&args.text).map_err(|e| ModelError::Io { path: args.text.display().to_string(), reason: e.to_string() })?;
    let parsed = train::parse_examples(&text);
    let eos = tok.token_to_id("<|endoftext|>").map(|_| "<|endoftext|>".to_string());
    Ok((parsed.records, train::ChatTemplate::plain(eos), true))
}
