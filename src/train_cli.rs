//! `loratab train`: fine-tune a LoRA adapter on a text file and write it in PEFT's format.
//!
//! The loop itself is `train::Session::step`; this file only wires files, the progress bar,
//! validation, checkpoints and Ctrl-C around it. The adapter is written at the end, every
//! `--save-every` steps, and when Ctrl-C stops the run (after the step in flight), together with
//! `training_state.safetensors` (AdamW's moments and the step) so `--resume DIR` continues exactly.
//!
//! `--data FILE` trains on examples (JSON Lines of `{"text"}`, `{"prompt", "completion"}` or
//! `{"messages"}`; a plain text file trains as `--text` does) through the model's chat template,
//! with the loss on the answers only unless `--no-mask-prompt`. Bad lines are reported by number and
//! skipped. Every adapter folder also holds `training_data.json` (`train::DataRecord`): text or
//! examples, and for examples the template, its tokens and the masking.
//!
//! `--keep best` (the default) writes the adapter of the lowest validation loss into `--out` and the
//! last one into `--out`/last; `--keep last` the other way round (`--out`/best). `--early-stop N`
//! ends the run after N validations without a new best.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use loratab::gpu::GpuContext;
use loratab::lora::{Adapter, Init, LoraError, LoraOptions, Target};
use loratab::model::{Config, GpuModel, ModelError, Tokenizer, WeightFormat};
use loratab::train::{self, memory, ChatTemplate, Dataset, Decay, Format, DataRecord, GpuLora, Session, TrainError, TrainSettings, TrainingState};

const STATE_FILE: &str = "training_state.safetensors";

#[derive(Clone, Copy, ValueEnum)]
pub enum DecayArg {
    Cosine,
    Linear,
    Constant,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeepArg {
    /// The adapter of the lowest validation loss goes into --out, the last one into --out/last.
    Best,
    /// The last adapter goes into --out, the best one into --out/best.
    Last,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TemplateArg {
    /// The model's own chat template (the plain one when it has none).
    Model,
    /// `Question: …` / `Answer: …` lines, each answer ended by the model's EOS token.
    Plain,
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
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    text: Option<PathBuf>,
    /// Examples to train on: JSON Lines of {"text": …}, {"prompt": …, "completion": …} or
    /// {"messages": [{"role", "content"}, …]} (a plain text file trains as --text does). About a
    /// tenth of the examples, spread through the file, are held out for validation.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The chat template examples are rendered with.
    #[arg(long, value_enum, default_value = "model")]
    template: TemplateArg,
    /// Train examples on every token, prompts included (default: the loss is on the answers only).
    #[arg(long)]
    no_mask_prompt: bool,
    /// Which adapter --out gets: the one of the lowest validation loss, or the last (the other goes
    /// into --out/last or --out/best).
    #[arg(long, value_enum, default_value = "best")]
    keep: KeepArg,
    /// Stop after this many validations (every --eval-every steps) without a new lowest validation
    /// loss (0 = never).
    #[arg(long, default_value_t = 0)]
    early_stop: usize,
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
    /// GPU memory the run may use (e.g. 4GiB, 512MB; `none` for no limit): a run whose estimate
    /// (weights + activations + adapter + AdamW moments) is above it is refused before allocating.
    #[arg(long, default_value = "8GiB", value_parser = parse_max_memory)]
    max_memory: MaxMemory,
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

/// `--max-memory`: bytes, or no limit.
#[derive(Clone, Copy)]
pub struct MaxMemory(Option<u64>);

fn parse_max_memory(s: &str) -> Result<MaxMemory, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(MaxMemory(None));
    }
    memory::parse_bytes(s).map(|b| MaxMemory(Some(b)))
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
    #[error(transparent)]
    Template(#[from] train::TemplateError),
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

/// Write an adapter, its training state and `training_data.json` into `dir`.
fn write_adapter(mut adapter: Adapter, state: &TrainingState, base: &str, record: &DataRecord, dir: &Path) -> Result<(), TrainCliError> {
    adapter.config.base_model_name_or_path = Some(base.to_string());
    let write_err = |e: std::io::Error| TrainError::Write { path: dir.display().to_string(), reason: e.to_string() };
    adapter.save_dir(dir).map_err(write_err)?;
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    std::fs::write(&tmp, state.to_bytes()?).and_then(|()| std::fs::rename(&tmp, dir.join(STATE_FILE))).map_err(write_err)?;
    std::fs::write(dir.join(train::DATA_FILE), record.to_json()).map_err(write_err)?;
    // A folder reused from an older version must not keep its record of another run under the old name.
    let _ = std::fs::remove_file(dir.join(train::OLD_DATA_FILE));
    Ok(())
}

/// Where the adapters went: (folder, step, validation loss) of the best and of the last.
struct Saved {
    best: (PathBuf, usize, Option<f64>),
    last: (PathBuf, usize, Option<f64>),
}

/// Write the last adapter and the best one (the last until a validation has been made): the one
/// `--keep` names into `--out`, the other into `--out`/last or `--out`/best.
async fn save(ctx: &GpuContext, session: &Session, args: &TrainArgs, base: &str, record: &DataRecord) -> Result<Saved, TrainCliError> {
    let (last_dir, best_dir) = match args.keep {
        KeepArg::Best => (args.out.join("last"), args.out.clone()),
        KeepArg::Last => (args.out.clone(), args.out.join("best")),
    };
    let step = session.steps_done();
    let last_val = session.last_validation().filter(|v| v.step == step).map(|v| v.loss);
    write_adapter(session.adapter(ctx).await?, &session.state(ctx).await?, base, record, &last_dir)?;
    let best = match session.best() {
        Some(b) => {
            write_adapter(b.adapter.clone(), &b.state, base, record, &best_dir)?;
            (best_dir, b.step, Some(b.loss))
        }
        None => {
            write_adapter(session.adapter(ctx).await?, &session.state(ctx).await?, base, record, &best_dir)?;
            (best_dir, step, last_val)
        }
    };
    Ok(Saved { best, last: (last_dir, step, last_val) })
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
    let path = args.text.as_ref().or(args.data.as_ref()).expect("clap requires --text or --data");
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    let (model, tokenizer) = crate::model_arg::Source::open(args.model.as_deref())?.model(args.base_dtype)?;
    // Recorded in the adapter's config as PEFT's base_model_name_or_path.
    let base = crate::model_arg::base_name(args.model.as_deref());
    let settings = settings(&args, &model.config);
    // Before the GPU starts, so a bad setting or unusable data costs no device set-up.
    settings.validate(&model.config)?;
    if args.early_stop > 0 && args.eval_every == 0 {
        return Err(TrainCliError::Usage("--early-stop counts validations, which --eval-every 0 turns off: give --eval-every N".into()));
    }
    let (data, record) = data(&args, &text, &model.config, &tokenizer, settings.seq_len)?;
    let ctx = GpuContext::new().await.map_err(ModelError::from)?;
    ctx.set_tuning(loratab::gpu::tune::wanted());
    let frozen = Frozen { bytes: memory::weights(&model, ctx.max_binding()), formats: crate::model_arg::formats(&model) };
    // The adapter on the host first: the run's whole budget is checked against --max-memory
    // before anything is allocated on the GPU.
    let adapter = match &args.resume {
        Some(dir) => Adapter::load_dir(dir)?,
        None => {
            let opts = lora_options(&args)?;
            train::validate_lora(&opts)?;
            Adapter::from_options(&model.config, &opts)?
        }
    };
    memory::check(frozen.bytes, &model.config, &adapter, &settings)?;
    let gm = GpuModel::upload(&ctx, &model).await?;
    // The host copy is not needed again (the GPU holds the weights).
    drop(model);
    let lora = match &args.resume {
        Some(dir) => resume(&ctx, &gm, dir, adapter, settings.steps).await?,
        None => {
            drop(adapter);
            train::new_lora(&ctx, &gm, &lora_options(&args)?).await?
        }
    };
    let mut session = Session::with_data(&ctx, &gm, data, lora, settings).await?;
    let memory = report_memory(&ctx, &gm.config, &frozen, &session).await?;
    let run = train_loop(&ctx, &gm, &mut session, &args, &base, &record, &stop).await?;
    let saved = save(&ctx, &session, &args, &base, &record).await?;
    report(&ctx, &session, &args.out, &saved, &run, &memory);
    Ok(())
}

/// The training data from `--text` or `--data`, and the record of it written beside the adapter. Bad lines and
/// examples that fail to render are reported by line number and skipped; it is an error only when
/// nothing trainable is left.
fn data(args: &TrainArgs, text: &str, config: &Config, tok: &Tokenizer, seq_len: usize) -> Result<(Dataset, DataRecord), TrainCliError> {
    let parsed = match &args.data {
        Some(_) => train::parse_examples(text),
        None => return Ok((Dataset::new(tok.encode(text)?, seq_len)?, DataRecord::text(seq_len))),
    };
    let Format::JsonLines(kind) = parsed.format else {
        return Ok((Dataset::new(tok.encode(text)?, seq_len)?, DataRecord::text(seq_len)));
    };
    let file = args.data.as_ref().expect("--data given").display().to_string();
    for bad in &parsed.bad {
        eprintln!("{file}: {bad}; skipped");
    }
    let Some(kind) = kind else {
        return Err(TrainCliError::Usage(format!("{file} has no usable example: every line is wrong (see above)")));
    };
    let template = template(args, tok, config)?;
    let (examples, failed) = template.examples(tok, &parsed.records);
    for (line, e) in &failed {
        eprintln!("{file}: line {line}: {e}; skipped");
    }
    let mask = !args.no_mask_prompt;
    let examples: Vec<_> = examples.into_iter().map(|e| if mask { e } else { e.unmasked() }).collect();
    let data = Dataset::from_examples(examples, seq_len)?;
    let ex = data.examples.as_ref().expect("made from examples");
    let skipped = parsed.bad.len() + failed.len();
    eprintln!(
        "{} examples ({}) with {} template{}: {} to train on, {} held out; {} truncated to --seq-len {seq_len}, {} with no answer token left dropped, {skipped} line{} skipped",
        ex.train.len() + ex.validation.len(),
        kind.name(),
        if template.is_plain() { "the plain" } else { "the model's" },
        if mask { ", loss on the answers only" } else { ", loss on every token" },
        ex.train.len(),
        ex.validation.len(),
        ex.truncated,
        ex.dropped,
        if skipped == 1 { "" } else { "s" },
    );
    Ok((data, DataRecord::examples(Some(kind), &template, mask, seq_len)))
}

/// The chat template `--template` names.
fn template(args: &TrainArgs, tok: &Tokenizer, config: &Config) -> Result<ChatTemplate, TrainCliError> {
    Ok(match args.template {
        TemplateArg::Model => ChatTemplate::for_model(tok, config)?,
        TemplateArg::Plain => ChatTemplate::plain_for_model(tok, config),
    })
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
        max_memory: args.max_memory.0,
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

/// The adapter loaded from `dir` on the GPU with its AdamW state (when saved), checked to have steps left.
async fn resume(ctx: &GpuContext, gm: &GpuModel, dir: &Path, adapter: Adapter, steps: usize) -> Result<GpuLora, TrainCliError> {
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
    /// Stopped by --early-stop.
    early_stopped: bool,
}

/// Step until the run is finished, Ctrl-C is pressed or --early-stop says so, with the progress
/// bar, validation (keeping the best adapter) every `--eval-every` steps and checkpoints every
/// `--save-every` steps.
async fn train_loop(
    ctx: &GpuContext,
    gm: &GpuModel,
    session: &mut Session,
    args: &TrainArgs,
    base: &str,
    record: &DataRecord,
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
    let mut val = session.validate(ctx, gm).await?.loss;
    let d = &session.data;
    let what = match &d.examples {
        Some(_) => format!("{} examples ({} held out)", d.train_windows + d.validation_windows, d.validation_windows),
        None => format!("{} tokens ({} windows of {}, {} held out)", d.tokens.len(), d.train_windows, s.seq_len, d.validation_windows),
    };
    bar.suspend(|| eprintln!("training {what} from step {first}; validation loss {val:.4}"));
    let start = Instant::now();
    let (mut tokens_run, mut loss) = (0usize, f32::NAN);
    let (mut interrupted, mut early_stopped) = (false, false);
    let start_val = val;
    while !session.finished() {
        let r = match session.step(ctx, gm).await {
            Ok(r) => r,
            Err(e) => return Err(diverged(ctx, session, args, base, record, &bar, e).await),
        };
        tokens_run += r.tokens;
        if let Some(l) = r.loss {
            loss = l;
        }
        let at_eval = args.eval_every > 0 && r.step % args.eval_every == 0;
        // Ctrl-C is checked after the step in flight, so what is saved is a whole step; that step is
        // validated too, so it can be kept as the best.
        interrupted = stop.load(Ordering::SeqCst);
        if at_eval || session.finished() || interrupted {
            // Validation settles the last update too, so it can be the one that finds it refused.
            val = match session.validate(ctx, gm).await {
                Ok(v) => v.loss,
                Err(e) => return Err(diverged(ctx, session, args, base, record, &bar, e).await),
            };
        }
        let rate = tokens_run as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("loss {loss:.4} val {val:.4} lr {:.2e} {rate:.0} tok/s", r.lr));
        bar.set_position(r.step as u64);
        if at_eval {
            let best = session.best().map(|b| format!(" (best {:.4} at step {})", b.loss, b.step)).unwrap_or_default();
            bar.suspend(|| eprintln!("step {}: loss {loss:.4}, validation loss {val:.4}{best}, {rate:.0} tokens/s", r.step));
            if train::diverging(start_val, val) {
                bar.suspend(|| eprintln!("{}", train::DIVERGING));
            }
            if session.stop_early(args.early_stop) {
                early_stopped = true;
                bar.suspend(|| eprintln!("stopping early: {} validations without a lower validation loss", args.early_stop));
                break;
            }
        }
        if args.save_every > 0 && r.step % args.save_every == 0 && !session.finished() {
            save(ctx, session, args, base, record).await?;
        }
        if interrupted {
            break;
        }
    }
    bar.finish_and_clear();
    if interrupted || early_stopped {
        // The steps since the last read (Ctrl-C or --early-stop between two reads).
        loss = session.trainer.read_loss(ctx).await?;
    }
    Ok(LoopEnd { start, tokens_run, loss, val, interrupted, early_stopped })
}

/// The error that ends the loop. A step that was not applied (non-finite gradients, or an update
/// that would have overflowed) leaves the last good adapter on the GPU: it is saved first.
async fn diverged(ctx: &GpuContext, session: &Session, args: &TrainArgs, base: &str, record: &DataRecord, bar: &ProgressBar, e: train::TrainError) -> TrainCliError {
    if !matches!(e, train::TrainError::NonFinite { .. } | train::TrainError::UpdateOverflow { .. }) {
        return e.into();
    }
    bar.abandon();
    match save(ctx, session, args, base, record).await {
        Ok(saved) => {
            eprintln!("the adapter of step {} was saved to {}", saved.last.1, saved.last.0.display());
            e.into()
        }
        Err(save_error) => save_error,
    }
}

/// Say where the adapters went, which step each is from (and how to continue an interrupted run),
/// and print the run's summary as one JSON line on stdout for scripts.
fn report(ctx: &GpuContext, session: &Session, out: &Path, saved: &Saved, run: &LoopEnd, memory: &Memory) {
    let done = session.steps_done();
    let val = |v: Option<f64>| v.map(|v| format!(", validation loss {v:.4}")).unwrap_or_default();
    let (best, last) = (&saved.best, &saved.last);
    eprintln!("best adapter (step {}{}) saved to {}", best.1, val(best.2), best.0.display());
    eprintln!("last adapter (step {}{}) saved to {}", last.1, val(last.2), last.0.display());
    if run.interrupted {
        eprintln!("interrupted at step {done} (continue with --resume {})", last.0.display());
    }
    let examples = session.data.examples.as_ref().map(|ex| {
        serde_json::json!({
            "train": ex.train.len(),
            "validation": ex.validation.len(),
            "truncated": ex.truncated,
            "dropped": ex.dropped,
        })
    });
    let budget = &memory.budget;
    let summary = serde_json::json!({
        "steps": done,
        "loss": run.loss,
        "val_loss": run.val,
        "best_step": best.1,
        "best_val_loss": best.2,
        "best_out": best.0.display().to_string(),
        "last_out": last.0.display().to_string(),
        "early_stopped": run.early_stopped,
        "examples": examples,
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
    let (records, template, answers_only) = export_examples(&args, &tokenizer, &model.config)?;
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

/// The records, template and masking of the examples `--data` names (bad lines are reported and
/// left out, as `train` leaves them out).
fn export_examples(args: &TrainArgs, tok: &Tokenizer, config: &Config) -> Result<(Vec<(usize, train::Record)>, ChatTemplate, bool), TrainCliError> {
    let Some(path) = &args.data else {
        return Err(TrainCliError::Usage("export-trl writes out examples: give them with --data FILE (JSON Lines), not --text".into()));
    };
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io { path: path.display().to_string(), reason: e.to_string() })?;
    let parsed = train::parse_examples(&text);
    if parsed.format == Format::PlainText {
        return Err(TrainCliError::Usage(format!("{} is plain text; export-trl writes out JSON Lines examples ({{\"prompt\", \"completion\"}}, {{\"messages\"}} or {{\"text\"}} per line)", path.display())));
    }
    for bad in &parsed.bad {
        eprintln!("{}: {bad}; skipped", path.display());
    }
    Ok((parsed.records, template(args, tok, config)?, !args.no_mask_prompt))
}
