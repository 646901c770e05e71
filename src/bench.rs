//! `loratab bench`: what LoRA promises — training that costs little more than inference, no added
//! latency after merging — measured on this GPU, with the same cases run by PyTorch + PEFT
//! (`tools/bench_torch.py`) for a ratio beside every figure.
//!
//! The cases are defined here once ([`Cases`]) and handed to the PyTorch script as JSON, so both
//! sides run the same shapes and hyperparameters. Every result is a [`Row`] keyed by a name both
//! sides spell the same way. Sections:
//! - `matmul`: GFLOP/s of the linear layers' shapes (rows = batch · seq tokens), in the layout the
//!   model runs them (X·Wᵀ for Linear [out, in], X·W for GPT-2's Conv1D [in, out]), the backward's
//!   input-gradient layout, and Xᵀ·G (weight gradients);
//! - `train`: one optimizer step as `loratab train` runs it ([`Session::step`]: forward, loss,
//!   backward, global-norm clipping with its one read-back, AdamW), time and tokens/s, and the GPU
//!   memory measured by the tensor counter beside [`memory::estimate`]'s budget;
//! - `forward`: the forward pass of one batch (logits and per-token losses, nothing read back) with
//!   the base weights, with the adapter merged into them, and with the adapter unmerged (its branch
//!   x·Aᵀ·Bᵀ·s added at every adapted layer), on the same tokens and the same kernels otherwise;
//! - `generate`: greedy generation after a prompt (KV cache): the prompt's prefill time per token
//!   and the time per new token (tokens/s), against transformers' `generate`, and their ratio (by
//!   wall time, and by CPU time on a software GPU); and the same loop
//!   the way loratab generated before its decode path ("old path": 64 × 64 matmul tiles for one
//!   row, fresh buffers every step, the whole row of logits read back and chosen on the CPU).
//!
//! Random models (no files): the default model's shape (models/austen-5m), GPT-2 124M and
//! SmolLM2-135M, built in memory with weights ~ U(±0.02·√3). Timings are wall-clock with the GPU
//! drained (`poll` wait) before the clock stops; medians over repetitions where noted.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::gpu::{self, GpuContext};
use crate::lora::{Adapter, LoraOptions, Target};
use crate::model::{Arch, Block, Config, GpuModel, HostTensor, Linear, Mlp, Model, Norm, Weight, WeightFormat, WeightLayout};
use crate::ops::{Layout, Matmul};
use crate::rng::Rng;
use crate::train::{self, memory, Session, TrainError, TrainSettings, Trainer};

/// The model shapes the bench knows, by name (the first three are the default set).
pub const MODELS: [&str; 4] = ["default", "gpt2", "smollm2", "qwen0.5b"];

/// The shape of a named model (random weights are made by [`random_model`]).
pub fn model_config(name: &str) -> Option<Config> {
    let llama = |vocab, d, layers, heads, kv, ffn, max_pos, theta, tied| Config {
        arch: Arch::Llama,
        model_type: "llama".into(),
        vocab_size: vocab,
        hidden_size: d,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim: d / heads,
        intermediate_size: ffn,
        max_positions: max_pos,
        norm_eps: 1e-5,
        rope_theta: theta,
        tie_word_embeddings: tied,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        stop_ids: Vec::new(),
    };
    Some(match name {
        // models/austen-5m: the Llama that `tools/pretrain.py` trains.
        "default" => llama(4096, 256, 6, 4, 2, 688, 512, 10000.0, true),
        "smollm2" => llama(49152, 576, 30, 9, 3, 1536, 8192, 100000.0, true),
        // Qwen2.5-0.5B: 14 query / 2 key-value heads of 64, biases on q, k, v (a Qwen2 layout).
        "qwen0.5b" => Config { model_type: "qwen2".into(), qkv_bias: true, head_dim: 64, ..llama(151936, 896, 24, 14, 2, 4864, 32768, 1000000.0, true) },
        "gpt2" => Config {
            arch: Arch::Gpt2,
            model_type: "gpt2".into(),
            vocab_size: 50257,
            hidden_size: 768,
            num_layers: 12,
            num_heads: 12,
            num_kv_heads: 12,
            head_dim: 64,
            intermediate_size: 3072,
            max_positions: 1024,
            norm_eps: 1e-5,
            rope_theta: 0.0,
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            stop_ids: Vec::new(),
        },
        _ => return None,
    })
}

/// The same shape as a transformers config.json (what the PyTorch side builds its model from).
pub fn hf_config(c: &Config) -> serde_json::Value {
    match c.arch {
        Arch::Gpt2 => serde_json::json!({
            "model_type": "gpt2", "vocab_size": c.vocab_size, "n_embd": c.hidden_size, "n_layer": c.num_layers,
            "n_head": c.num_heads, "n_inner": c.intermediate_size, "n_positions": c.max_positions,
            "layer_norm_epsilon": c.norm_eps, "activation_function": "gelu_new", "tie_word_embeddings": c.tie_word_embeddings,
        }),
        // qwen2 implies q, k, v biases (transformers' Qwen2 has no flag for them).
        Arch::Llama => serde_json::json!({
            "model_type": c.model_type, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
            "num_hidden_layers": c.num_layers, "num_attention_heads": c.num_heads,
            "num_key_value_heads": c.num_kv_heads, "head_dim": c.head_dim, "intermediate_size": c.intermediate_size,
            "max_position_embeddings": c.max_positions, "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
            "tie_word_embeddings": c.tie_word_embeddings, "hidden_act": "silu",
        }),
    }
}

/// A model of shape `c` with random weights (norms at 1, biases at 0), built in memory.
pub fn random_model(c: &Config, seed: u64) -> Model {
    let mut rng = Rng::new(seed);
    let a = 0.02 * 3f32.sqrt();
    let mut random = |shape: &[usize]| {
        let n = shape.iter().product();
        HostTensor::new((0..n).map(|_| rng.uniform(-a, a)).collect(), shape.to_vec())
    };
    let (d, f, v) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let gpt2 = c.arch == Arch::Gpt2;
    let matrix = |t: HostTensor| Weight::from_f32(&t, WeightFormat::F32, "random").expect("f32 takes any shape");
    let token_embedding = matrix(random(&[v, d]));
    let position_embedding = gpt2.then(|| random(&[c.max_positions, d]));
    let norm = |d: usize| Norm {
        weight: HostTensor::new(vec![1.0; d], vec![d]),
        bias: gpt2.then(|| HostTensor::new(vec![0.0; d], vec![d])),
    };
    let mut linear = |i: usize, o: usize, bias: bool| {
        let (shape, layout) = if gpt2 { ([i, o], WeightLayout::InOut) } else { ([o, i], WeightLayout::OutIn) };
        Linear {
            weight: matrix(random(&shape)),
            bias: bias.then(|| HostTensor::new(vec![0.0; o], vec![o])),
            in_dim: i,
            out_dim: o,
            layout,
        }
    };
    let (qd, kvd) = (c.q_dim(), c.kv_dim());
    let blocks = (0..c.num_layers)
        .map(|_| Block {
            attn_norm: norm(d),
            q: linear(d, qd, c.qkv_bias),
            k: linear(d, kvd, c.qkv_bias),
            v: linear(d, kvd, c.qkv_bias),
            o: linear(qd, d, c.o_bias),
            mlp_norm: norm(d),
            mlp: if gpt2 {
                Mlp::Gelu { fc: linear(d, f, c.mlp_bias), proj: linear(f, d, c.mlp_bias) }
            } else {
                Mlp::SwiGlu { gate: linear(d, f, c.mlp_bias), up: linear(d, f, c.mlp_bias), down: linear(f, d, c.mlp_bias) }
            },
        })
        .collect();
    let lm_head = (!c.tie_word_embeddings).then(|| linear(d, v, false));
    Model {
        config: c.clone(),
        token_embedding,
        position_embedding,
        blocks,
        final_norm: norm(d),
        lm_head,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatmulCase {
    pub key: String,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// "XW", "XWt" or "XtG" (see [`Layout`]).
    pub layout: String,
    /// B's storage format (a frozen weight kept compact: f16, q8_0, ...); f32 for gradients.
    #[serde(default = "f32_name")]
    pub format: String,
}

fn f32_name() -> String {
    "f32".into()
}

/// LoRA settings shared by both sides (PEFT's `LoraConfig` and AdamW's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoraCase {
    pub rank: usize,
    pub alpha: f32,
    /// loratab's target names (q, v, ...).
    pub targets: Vec<String>,
    /// The same as PEFT's `target_modules` for this architecture.
    pub peft_targets: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainCase {
    pub key: String,
    pub model: String,
    pub hf_config: serde_json::Value,
    pub batch: usize,
    pub seq: usize,
    pub lora: LoraCase,
    pub lr: f32,
    pub max_grad_norm: f32,
    /// Untimed steps first (pipelines, allocations), then timed ones.
    pub warmup: usize,
    pub steps: usize,
    /// The frozen weights' format (`--base-dtype`); PyTorch runs only the f32 cases.
    #[serde(default = "f32_name")]
    pub format: String,
    #[serde(default)]
    pub grad_checkpoint: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardCase {
    pub key: String,
    pub model: String,
    pub hf_config: serde_json::Value,
    pub batch: usize,
    pub seq: usize,
    pub ranks: Vec<usize>,
    pub lora: LoraCase,
    pub reps: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerateCase {
    pub key: String,
    pub model: String,
    pub hf_config: serde_json::Value,
    /// Prompt tokens (random ids), run in one prefill.
    pub prompt: usize,
    /// New tokens per generation (greedy); the first comes with the prefill.
    pub new_tokens: usize,
    /// Generations timed (medians reported).
    pub reps: usize,
    /// New tokens of the old path's one timed generation (it is slow: 0 skips it).
    pub old_tokens: usize,
    /// The frozen weights' format (f16: the default model as it ships); PyTorch runs f32 only.
    pub format: String,
}

/// The profile section: GPU time per kernel kind of one training step and one generated token
/// (`train::profile::profile_work`); loratab only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProfileCase {
    pub key: String,
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    /// Prompt tokens before the profiled token.
    pub prompt: usize,
}

/// Everything one bench run measures; written as JSON for `tools/bench_torch.py`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Cases {
    pub matmul: Vec<MatmulCase>,
    pub train: Vec<TrainCase>,
    pub forward: Vec<ForwardCase>,
    #[serde(default)]
    pub generate: Vec<GenerateCase>,
    #[serde(default)]
    pub profile: Vec<ProfileCase>,
    pub seed: u64,
}

/// One figure: `key` names it the same way on both sides.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub key: String,
    pub value: f64,
    /// "GFLOP/s", "ms", "tok/s", "MB".
    pub unit: String,
}

/// One side's results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub tool: String,
    pub device: String,
    pub backend: String,
    pub rows: Vec<Row>,
    /// The profile section's results (loratab only; not read back from a JSON file).
    #[serde(default, skip_deserializing)]
    pub profiles: Vec<(String, train::profile::WorkProfile)>,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sections among matmul, train, forward, generate, profile (memory comes with train).
    pub only: Vec<String>,
    pub models: Vec<String>,
    pub seqs: Vec<usize>,
    pub batch: usize,
    pub steps: usize,
    pub warmup: usize,
    pub ranks: Vec<usize>,
    pub forward_reps: usize,
    pub forward_models: Vec<String>,
    /// Frozen-weight formats of the matmul, train and generate sections (f32 first: PyTorch's comparison).
    pub formats: Vec<WeightFormat>,
    pub grad_checkpoint: bool,
    /// Models of the generate section.
    pub generate_models: Vec<String>,
    /// New tokens per generation in the generate section.
    pub new_tokens: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            only: vec!["matmul".into(), "train".into(), "forward".into(), "generate".into()],
            models: MODELS[..3].iter().map(|s| s.to_string()).collect(),
            seqs: vec![128, 256],
            batch: 1,
            steps: 2,
            warmup: 1,
            ranks: vec![1, 4, 8, 16, 64],
            forward_reps: 7,
            forward_models: vec!["default".into()],
            formats: vec![WeightFormat::F32],
            grad_checkpoint: false,
            generate_models: vec!["default".into(), "smollm2".into()],
            new_tokens: 16,
        }
    }
}

/// Everything `loratab bench` can fail with.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Lora(#[from] crate::lora::LoraError),
    #[error("unknown model `{0}` (known: default, gpt2, smollm2, qwen0.5b)")]
    UnknownModel(String),
    #[error("unknown weight format `{0}` (known: f32, f16, bf16, q8_0, q4_0, q4_1)")]
    UnknownFormat(String),
    #[error("waiting for the GPU failed: {0}")]
    Poll(String),
}

/// The LoRA setting of every case: rank r on q and v, α = 2r (scale 2). GPT-2's q and v live in
/// the fused c_attn, which PEFT adapts whole; loratab adapts q, k and v of it for the same work.
fn lora_case(arch: Arch, rank: usize) -> LoraCase {
    let (targets, peft): (&[&str], &[&str]) = match arch {
        Arch::Gpt2 => (&["q", "k", "v"], &["c_attn"]),
        Arch::Llama => (&["q", "v"], &["q_proj", "v_proj"]),
    };
    LoraCase {
        rank,
        alpha: 2.0 * rank as f32,
        targets: targets.iter().map(|s| s.to_string()).collect(),
        peft_targets: peft.iter().map(|s| s.to_string()).collect(),
    }
}

fn config(name: &str) -> Result<Config, BenchError> {
    model_config(name).ok_or_else(|| BenchError::UnknownModel(name.into()))
}

/// The cases of `opts`.
pub fn cases(opts: &BenchOptions) -> Result<Cases, BenchError> {
    let mut out = Cases { seed: 0, ..Cases::default() };
    let has = |s: &str| opts.only.iter().any(|o| o == s);
    if has("matmul") {
        let rows = opts.batch * opts.seqs.first().copied().unwrap_or(128);
        for name in &opts.models {
            let c = config(name)?;
            let (d, f, qd) = (c.hidden_size, c.intermediate_size, c.q_dim());
            // Forward layout of the weights, and the backward's dx = dy·(∂y/∂x) layout.
            let (fwd, bwd) = if c.arch == Arch::Gpt2 { ("XW", "XWt") } else { ("XWt", "XW") };
            // The LM head's columns, capped so that W fits one 128 MiB binding (GPT-2's is split).
            let vocab = c.vocab_size.min((128 << 20) / 4 / d);
            for &format in &opts.formats {
                let mut add = |what: &str, m, n, k, layout: &str| {
                    // A quantized weight's rows (N for X·W's [K, N], K for X·Wᵀ's [N, K]) must be whole blocks.
                    let row = if layout == "XW" { n } else { k };
                    if format.is_quantized() && row % 32 != 0 {
                        return;
                    }
                    let tag = if format == WeightFormat::F32 { String::new() } else { format!(" {format}") };
                    let key = format!("matmul {name} {what} {m}x{k}·{k}x{n} {layout}{tag}");
                    out.matmul.push(MatmulCase { key, m, n, k, layout: layout.into(), format: format.name().into() })
                };
                add("q", rows, qd, d, fwd);
                add("mlp up", rows, f, d, fwd);
                add("mlp down", rows, d, f, fwd);
                add("lm head", rows, vocab, d, "XWt");
                add("dx mlp up", rows, d, f, bwd);
            }
            let key = format!("matmul {name} weight grad {d}x{rows}·{rows}x{d} XtG");
            out.matmul.push(MatmulCase { key, m: d, n: d, k: rows, layout: "XtG".into(), format: f32_name() });
        }
    }
    if has("train") {
        for name in &opts.models {
            let c = config(name)?;
            for &format in opts.formats.iter().filter(|f| !f.is_quantized() || whole_blocks(&c)) {
                for &seq in &opts.seqs {
                    let mut tag = if format == WeightFormat::F32 { String::new() } else { format!(" {format}") };
                    if opts.grad_checkpoint {
                        tag += " ckpt";
                    }
                    out.train.push(TrainCase {
                        key: format!("train {name} b{} seq{seq} r8{tag}", opts.batch),
                        model: name.clone(),
                        hf_config: hf_config(&c),
                        batch: opts.batch,
                        seq,
                        lora: lora_case(c.arch, 8),
                        lr: 1e-3,
                        max_grad_norm: 1.0,
                        warmup: opts.warmup,
                        steps: opts.steps,
                        format: format.name().into(),
                        grad_checkpoint: opts.grad_checkpoint,
                    });
                }
            }
        }
    }
    if has("forward") {
        for name in &opts.forward_models {
            let c = config(name)?;
            let seq = opts.seqs.first().copied().unwrap_or(128);
            out.forward.push(ForwardCase {
                key: format!("forward {name} b{} seq{seq}", opts.batch),
                model: name.clone(),
                hf_config: hf_config(&c),
                batch: opts.batch,
                seq,
                ranks: opts.ranks.clone(),
                lora: lora_case(c.arch, 0),
                reps: opts.forward_reps,
            });
        }
    }
    if has("profile") {
        for name in &opts.models {
            let c = config(name)?;
            let seq = opts.seqs.first().copied().unwrap_or(128).min(c.max_positions - 2);
            out.profile.push(ProfileCase { key: format!("profile {name} b{} seq{seq}", opts.batch), model: name.clone(), batch: opts.batch, seq, prompt: seq });
        }
    }
    if has("generate") {
        for name in &opts.generate_models {
            let c = config(name)?;
            let prompt = opts.seqs.first().copied().unwrap_or(128).min(c.max_positions - opts.new_tokens);
            // The large model's old path takes seconds a token on a software GPU: a few suffice.
            let big = c.hidden_size * c.num_layers > 4096;
            for &format in opts.formats.iter().filter(|f| !f.is_quantized() || whole_blocks(&c)) {
                let f32 = format == WeightFormat::F32;
                out.generate.push(GenerateCase {
                    key: format!("generate {name} prompt{prompt}{}", if f32 { String::new() } else { format!(" {format}") }),
                    model: name.clone(),
                    hf_config: hf_config(&c),
                    prompt,
                    new_tokens: opts.new_tokens.max(2),
                    reps: if big { 1 } else { 3 },
                    // The old path once, beside f32.
                    old_tokens: match (f32, big) {
                        (false, _) => 0,
                        (true, true) => 3,
                        (true, false) => opts.new_tokens.max(2),
                    },
                    format: format.name().into(),
                });
            }
        }
    }
    Ok(out)
}

/// Wait until the GPU has finished everything submitted.
fn drain(ctx: &GpuContext) -> Result<(), BenchError> {
    ctx.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| BenchError::Poll(e.to_string()))?;
    Ok(())
}

/// CPU seconds this process has used, all threads (lavapipe's workers included): on a shared
/// software GPU, wall time also counts other programs' use of the cores. Linux only.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some(ticks / 100.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn layout(s: &str) -> Layout {
    match s {
        "XW" => Layout::XW,
        "XtG" => Layout::XtG,
        _ => Layout::XWt,
    }
}

/// The fixed default variant's GFLOP/s (the row PyTorch is compared with), then the variant the
/// tuner picks for the shape's class and its GFLOP/s, measured the same way.
async fn bench_matmul(ctx: &GpuContext, case: &MatmulCase) -> Result<Vec<Row>, BenchError> {
    let spec = Matmul::new(case.m, case.n, case.k, layout(&case.layout));
    let format = format(&case.format)?;
    ctx.set_matmul_variant(Some(gpu::tune::DEFAULT));
    let default = matmul_gflops(ctx, case).await;
    ctx.set_matmul_variant(None);
    let default = default?;
    let chosen = ctx.tune(&spec, format).await?;
    let tuned = if chosen == gpu::tune::DEFAULT {
        default
    } else {
        ctx.set_matmul_variant(Some(chosen));
        let tuned = matmul_gflops(ctx, case).await;
        ctx.set_matmul_variant(None);
        tuned?
    };
    let name = gpu::tune::VARIANTS[chosen].name;
    Ok(vec![
        Row { key: case.key.clone(), value: default, unit: "GFLOP/s".into() },
        Row { key: format!("{} tuned: {name}", case.key), value: tuned, unit: "GFLOP/s".into() },
    ])
}

async fn matmul_gflops(ctx: &GpuContext, case: &MatmulCase) -> Result<f64, BenchError> {
    let spec = Matmul::new(case.m, case.n, case.k, layout(&case.layout));
    let mut rng = Rng::new(1);
    let a = ctx.upload(&rng.vec(spec.a_len()), &[spec.a_len()]).await?;
    // B as the frozen weight is stored: [N, K] for X·Wᵀ, [K, N] otherwise.
    let b_shape = if spec.layout == Layout::XWt { [spec.n, spec.k] } else { [spec.k, spec.n] };
    let b = HostTensor::new(rng.vec(spec.b_len()), b_shape.to_vec());
    let b = ctx.upload_weight(&Weight::from_f32(&b, format(&case.format)?, "B")?).await?;
    let c = ctx.zeros(&[spec.c_len()]).await?;
    let (a, b, c) = (&a, &b, &c);
    let run = |reps: usize| async move {
        let t = Instant::now();
        ctx.run(|enc| {
            for _ in 0..reps {
                gpu::matmul::encode(ctx, enc, &spec, &a, &b, None, &c)?;
            }
            Ok(())
        })
        .await?;
        drain(ctx)?;
        Ok::<f64, BenchError>(t.elapsed().as_secs_f64())
    };
    run(1).await?;
    // Enough back-to-back dispatches in one submission for ~0.3 s, so per-submit costs fade.
    let once = run(1).await?;
    let reps = ((0.3 / once) as usize).clamp(1, 500);
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(run(reps).await? / reps as f64);
    }
    Ok(spec.flops() / median(times) / 1e9)
}

fn lora_options(l: &LoraCase, rank: usize) -> Result<LoraOptions, BenchError> {
    let targets = l.targets.iter().map(|t| Target::parse(t)).collect::<Result<Vec<_>, _>>()?;
    Ok(LoraOptions { rank, alpha: 2.0 * rank as f32, targets, ..LoraOptions::default() })
}

/// Random token ids: `n` of them below `vocab`.
fn tokens(vocab: usize, n: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

/// Whether every weight row of `c` holds whole blocks of 32 values (the quantized formats' need).
fn whole_blocks(c: &Config) -> bool {
    [c.hidden_size, c.intermediate_size, c.q_dim()].iter().all(|x| x % 32 == 0)
}

fn format(name: &str) -> Result<WeightFormat, BenchError> {
    WeightFormat::parse(name).ok_or_else(|| BenchError::UnknownFormat(name.into()))
}

async fn bench_train(ctx: &GpuContext, case: &TrainCase, log: &dyn Fn(&str)) -> Result<Vec<Row>, BenchError> {
    let c = config(&case.model)?;
    let mut host = random_model(&c, 0);
    host.convert_weights(format(&case.format)?)?;
    let before = ctx.memory().live();
    ctx.memory().reset_peak();
    let model = GpuModel::upload(ctx, &host).await?;
    let frozen = memory::weights(&host, ctx.max_binding());
    drop(host);
    let opts = lora_options(&case.lora, case.lora.rank)?;
    let lora = train::new_lora(ctx, &model, &opts).await?;
    let total = case.warmup + case.steps;
    let settings = TrainSettings {
        steps: total.max(1),
        lr: case.lr,
        batch: case.batch,
        seq_len: case.seq,
        warmup: 0,
        max_grad_norm: Some(case.max_grad_norm),
        log_every: total.max(1),
        grad_checkpoint: case.grad_checkpoint,
        ..TrainSettings::default()
    };
    // Enough text for every step's windows plus the held-out split.
    let text = tokens(c.vocab_size, case.seq * case.batch * (total + 4) * 2, 3);
    let mut session = Session::new(ctx, &model, text, lora, settings.clone()).await?;
    for _ in 0..case.warmup {
        session.step(ctx, &model).await?;
    }
    drain(ctx)?;
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    for i in 0..case.steps {
        session.step(ctx, &model).await?;
        log(&format!("  {} step {}/{}", case.key, i + 1, case.steps));
    }
    drain(ctx)?;
    let step = t.elapsed().as_secs_f64() / case.steps as f64;
    let cpu = cpu0.zip(cpu_seconds()).map(|(a, b)| (b - a) / case.steps as f64);
    let measured = ctx.memory().peak() - before;
    let adapter = Adapter::from_options(&c, &opts)?;
    let budget = memory::estimate(frozen, &c, &adapter, &settings);
    let tokens = (case.batch * case.seq) as f64;
    let mut rows = vec![
        Row { key: format!("{} memory", case.key), value: measured as f64 / 1e6, unit: "MB".into() },
        Row { key: format!("{} memory budget", case.key), value: budget.total() as f64 / 1e6, unit: "MB".into() },
        Row { key: format!("{} memory of attention", case.key), value: budget.attention as f64 / 1e6, unit: "MB".into() },
    ];
    // No steps: the memory a run takes, which is all set up before the first step (tests/train_memory.rs
    // checks that steps allocate nothing more), for shapes too slow to step on a software GPU.
    if case.steps == 0 {
        return Ok(rows);
    }
    rows.splice(0..0, [
        Row { key: format!("{} step", case.key), value: step * 1e3, unit: "ms".into() },
        Row { key: format!("{} tokens/s", case.key), value: tokens / step, unit: "tok/s".into() },
    ]);
    // On a software GPU the CPU time is the cost that does not depend on what else runs.
    if ctx.adapter().device_type == "Cpu" {
        if let Some(cpu) = cpu {
            rows.insert(1, Row { key: format!("{} step CPU time", case.key), value: cpu * 1e3, unit: "cpu-ms".into() });
        }
    }
    Ok(rows)
}

async fn time_forward(ctx: &GpuContext, trainer: &Trainer, model: &GpuModel, adapter: bool) -> Result<f64, BenchError> {
    let t = Instant::now();
    trainer.forward_only(ctx, model, adapter).await?;
    drain(ctx)?;
    Ok(t.elapsed().as_secs_f64())
}

async fn bench_forward(ctx: &GpuContext, case: &ForwardCase, log: &dyn Fn(&str)) -> Result<Vec<Row>, BenchError> {
    let c = config(&case.model)?;
    let model = GpuModel::upload(ctx, &random_model(&c, 0)).await?;
    let ids = tokens(c.vocab_size, case.batch * case.seq, 5);
    let windows: Vec<&[u32]> = ids.chunks(case.seq).collect();
    let mut rows = Vec::new();
    let mut base = Vec::new();
    for &r in &case.ranks {
        let opts = lora_options(&case.lora, r)?;
        let lora = train::new_lora(ctx, &model, &opts).await?;
        let trainer = Trainer::new(ctx, &model, lora, case.batch, case.seq).await?;
        // Puts the tokens on the GPU (and compiles every pipeline once).
        trainer.loss_sum(ctx, &model, &windows).await?;
        let (mut merged, mut unmerged) = (Vec::new(), Vec::new());
        time_forward(ctx, &trainer, &model, true).await?;
        // Interleaved, so that a slow moment of the machine hits every variant alike.
        for _ in 0..case.reps {
            base.push(time_forward(ctx, &trainer, &model, false).await?);
            unmerged.push(time_forward(ctx, &trainer, &model, true).await?);
        }
        trainer.lora.merge_into(ctx, &model).await?;
        for _ in 0..case.reps {
            merged.push(time_forward(ctx, &trainer, &model, false).await?);
        }
        trainer.lora.unmerge_from(ctx, &model).await?;
        let ms = |v: Vec<f64>| median(v) * 1e3;
        rows.push(Row { key: format!("{} merged r{r}", case.key), value: ms(merged), unit: "ms".into() });
        rows.push(Row { key: format!("{} unmerged r{r}", case.key), value: ms(unmerged), unit: "ms".into() });
        log(&format!("  {} r{r} done", case.key));
    }
    rows.insert(0, Row { key: format!("{} base", case.key), value: median(base) * 1e3, unit: "ms".into() });
    Ok(rows)
}

/// One generation's timings: wall seconds of each step (step 0 is the prefill with the first
/// token, the others one new token each), and the process's CPU seconds over the prefill and over
/// the remaining steps (Linux; lavapipe's threads included).
struct StepTimes {
    wall: Vec<f64>,
    cpu: Option<(f64, f64)>,
}

/// One greedy generation of `n` tokens after `prompt`. `old` runs the loop as loratab did before
/// its decode path (full logits read back, `generate::sample` on the CPU; the caller turns the
/// matvec kernel off).
async fn generation_steps(ctx: &GpuContext, model: &GpuModel, prompt: &[u32], n: usize, old: bool) -> Result<StepTimes, BenchError> {
    use crate::generate::{sample, Sampling};
    let greedy = Sampling { temperature: 0.0, top_k: 0, seed: 0 };
    let mut rng = Rng::new(0);
    let (mut input, mut past, mut wall, mut cpu) = (prompt.to_vec(), 0, Vec::new(), vec![cpu_seconds()]);
    if old {
        for _ in 0..n {
            let t = Instant::now();
            let token = sample(&model.last_logits(ctx, &input, past, None).await?, &greedy, &mut rng);
            wall.push(t.elapsed().as_secs_f64());
            if cpu.len() == 1 {
                cpu.push(cpu_seconds());
            }
            past += input.len();
            input = vec![token];
        }
    } else {
        // `generate`'s own loop (greedy steps chained on the GPU): a step's time runs from the
        // previous read-back to its own, the prefill's from the start.
        let mut t = Instant::now();
        crate::generate::generate_watched(ctx, model, prompt, n, &greedy, None, &[], |_| {
            wall.push(t.elapsed().as_secs_f64());
            t = Instant::now();
            if cpu.len() == 1 {
                cpu.push(cpu_seconds());
            }
        })
        .await?;
    }
    cpu.push(cpu_seconds());
    let cpu = match cpu[..] {
        [Some(a), Some(b), Some(c)] => Some((b - a, c - b)),
        _ => None,
    };
    Ok(StepTimes { wall, cpu })
}

async fn bench_generate(ctx: &GpuContext, case: &GenerateCase, log: &dyn Fn(&str)) -> Result<Vec<Row>, BenchError> {
    let c = config(&case.model)?;
    let mut host = random_model(&c, 0);
    host.convert_weights(format(&case.format)?)?;
    let model = GpuModel::upload(ctx, &host).await?;
    let prompt = tokens(c.vocab_size, case.prompt, 5);
    let key = &case.key;
    // On a software GPU the CPU time is the cost that does not depend on what else runs.
    let software = ctx.adapter().device_type == "Cpu";
    let mut rows = Vec::new();
    let add = |rows: &mut Vec<Row>, what: &str, runs: Vec<StepTimes>| {
        let prefill = median(runs.iter().map(|r| r.wall[0]).collect());
        let decode = median(runs.iter().flat_map(|r| r.wall[1..].to_vec()).collect());
        let per = |unit: &str, name: &str, seconds: f64, tokens: usize| Row { key: format!("{key} {what}{name}"), value: seconds * 1e3 / tokens as f64, unit: unit.into() };
        rows.push(Row { key: format!("{key} {what}decode tokens/s"), value: 1.0 / decode, unit: "tok/s".into() });
        rows.push(per("ms", "decode ms/token", decode, 1));
        rows.push(per("ms", "prefill ms/token", prefill, case.prompt));
        // Issue #17's target reads as this ratio: a new token ≤ 3× a prefill token.
        let ratio = |name: &str, decode: f64, prefill: f64| Row { key: format!("{key} {what}{name}"), value: decode * case.prompt as f64 / prefill, unit: "×".into() };
        rows.push(ratio("decode / prefill token", decode, prefill));
        if let (true, Some(cpu)) = (software, runs.iter().map(|r| r.cpu).collect::<Option<Vec<_>>>()) {
            let decoded: usize = runs.iter().map(|r| r.wall.len() - 1).sum();
            let (decode_cpu, prefill_cpu) = (cpu.iter().map(|c| c.1).sum::<f64>() / decoded as f64, median(cpu.iter().map(|c| c.0).collect()));
            rows.push(per("cpu-ms", "decode CPU ms/token", decode_cpu, 1));
            rows.push(per("cpu-ms", "prefill CPU ms/token", prefill_cpu, case.prompt));
            rows.push(ratio("decode / prefill token, CPU time", decode_cpu, prefill_cpu));
        }
        log(&format!("{key} {what}: {:.1} ms/token decode, {:.2} ms/token prefill", decode * 1e3, prefill * 1e3 / case.prompt as f64));
    };
    // Untimed: pipelines, the KV cache.
    generation_steps(ctx, &model, &prompt, 2, false).await?;
    let mut runs = Vec::new();
    for _ in 0..case.reps {
        runs.push(generation_steps(ctx, &model, &prompt, case.new_tokens, false).await?);
    }
    add(&mut rows, "", runs);
    if case.old_tokens >= 2 {
        ctx.set_matvec(false);
        let old = generation_steps(ctx, &model, &prompt, case.old_tokens, true).await;
        ctx.set_matvec(true);
        add(&mut rows, "old path ", vec![old?]);
    }
    Ok(rows)
}

/// Run every case on `ctx`; `log` gets a line per finished case.
pub async fn run(ctx: &GpuContext, cases: &Cases, log: &dyn Fn(&str)) -> Result<Results, BenchError> {
    let a = ctx.adapter();
    let mut out = Results { tool: "loratab".into(), device: a.name.clone(), backend: format!("wgpu {} ({})", a.backend, a.driver), rows: Vec::new(), profiles: Vec::new() };
    for case in &cases.matmul {
        let rows = bench_matmul(ctx, case).await?;
        log(&format!("{}: {:.2} {} default, {:.2} tuned ({})", case.key, rows[0].value, rows[0].unit, rows[1].value, rows[1].key));
        // What tuning timed for this class (its cut product), every variant side by side.
        let class = gpu::tune::class(&Matmul::new(case.m, case.n, case.k, layout(&case.layout)), format(&case.format)?);
        if let Some(t) = ctx.tuned().into_iter().rev().find(|t| t.class == class) {
            let each: Vec<String> = t.gflops.iter().enumerate().map(|(i, g)| format!("{} {}", gpu::tune::VARIANTS[i].name, g.map_or("failed".into(), |g| format!("{g:.2}")))).collect();
            log(&format!("  tuning {class} on {:?}: {}", t.timed, each.join(", ")));
        }
        out.rows.extend(rows);
    }
    for case in &cases.forward {
        out.rows.extend(bench_forward(ctx, case, log).await?);
    }
    for case in &cases.generate {
        out.rows.extend(bench_generate(ctx, case, log).await?);
    }
    for case in &cases.profile {
        let c = config(&case.model)?;
        let model = GpuModel::upload(ctx, &random_model(&c, 0)).await?;
        let p = train::profile::profile_work(ctx, &model, case.batch, case.seq, case.prompt).await?;
        log(&format!("{}: step {:.1} ms, token {:.1} ms (wall, profiled)", case.key, p.step.wall_ms, p.token.wall_ms));
        out.profiles.push((case.key.clone(), p));
    }
    for case in &cases.train {
        let rows = bench_train(ctx, case, log).await?;
        log(&format!("{}: {:.0} {}", rows[0].key, rows[0].value, rows[0].unit));
        out.rows.extend(rows);
    }
    Ok(out)
}

/// A Markdown table: every row of `ours`, PyTorch's figure beside it when `theirs` has the key, and
/// the ratio. For speeds (GFLOP/s, tok/s) the ratio is ours / theirs; for times, theirs / ours —
/// so above 1 always means loratab is faster. For memory, ours / theirs (below 1: less memory).
pub fn table(ours: &Results, theirs: Option<&Results>) -> String {
    let mut s = String::new();
    let them = theirs.map(|t| t.tool.as_str()).unwrap_or("PyTorch");
    s += &format!("| benchmark | {} | {} | ratio |\n|---|---:|---:|---:|\n", ours.tool, them);
    for r in &ours.rows {
        let other = theirs.and_then(|t| t.rows.iter().find(|o| o.key == r.key)).map(|o| o.value);
        let ratio = other.filter(|&o| o > 0.0 && r.value > 0.0).map(|o| match r.unit.as_str() {
            "ms" | "cpu-ms" => o / r.value,
            _ => r.value / o,
        });
        let fmt = |v: f64| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") };
        s += &format!(
            "| {} | {} {} | {} | {} |\n",
            r.key,
            fmt(r.value),
            r.unit,
            other.map(|o| format!("{} {}", fmt(o), r.unit)).unwrap_or_else(|| "–".into()),
            ratio.map(|x| format!("{x:.2}×")).unwrap_or_else(|| "–".into())
        );
    }
    s
}


/// The profile section as text: per case, a table per piece of work.
pub fn profile_tables(ours: &Results) -> String {
    let mut s = String::new();
    for (key, p) in &ours.profiles {
        let work = [
            (format!("one training step (batch {} × {} tokens, LoRA r8 on q, v)", p.batch, p.seq), &p.step),
            (format!("one generated token (after a {}-token prompt)", p.prompt), &p.token),
        ];
        for (what, t) in work {
            s += &format!("\n{key}: {what}, {:.2} ms wall while profiled, {} submissions\n", t.wall_ms, t.profile.submits);
            s += &t.profile.table();
        }
    }
    s
}
