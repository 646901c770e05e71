//! The `loratab` binary: the native CLI, or, built for wasm32 by Trunk, the web app's entry point.

#[cfg(target_arch = "wasm32")]
fn main() {
    console_error_panic_hook::set_once();
    leptos::mount::mount_to_body(loratab::web::App);
}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod train_cli;

#[cfg(not(target_arch = "wasm32"))]
mod model_arg;

#[cfg(not(target_arch = "wasm32"))]
mod bench_cli;

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use clap::{Parser, Subcommand};
    use loratab::generate::Sampling;
    use loratab::gguf::GgufError;
    use loratab::gpu::GpuContext;
    use loratab::lora::{self, Adapter, LoraError};
    use crate::model_arg::{OpenError, Source};
    use loratab::model::{GpuModel, Model, ModelError, Tokenizer, WeightFormat};
    use loratab::train::{ChatTemplate, TemplateError};
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    #[derive(Parser)]
    #[command(name = "loratab", version, about = "LoRA fine-tuning of small transformers on your GPU")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Score a text file: mean next-token cross-entropy over consecutive chunks (one JSON line).
        Eval {
            /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json) or a llama
            /// .gguf file; default: the embedded austen-5m.
            #[arg(long)]
            model: Option<PathBuf>,
            /// Keep the frozen weights in this format on the GPU: f32, f16, bf16, q8_0, q4_0 or q4_1
            /// (default: as the file stores them).
            #[arg(long, value_parser = crate::model_arg::parse_format)]
            base_dtype: Option<WeightFormat>,
            /// The text file to score.
            #[arg(long)]
            text: PathBuf,
            /// Tokens per chunk (default: the model's context, at most 1024).
            #[arg(long)]
            seq_len: Option<usize>,
            /// A LoRA adapter folder in PEFT's format, merged into the model before scoring.
            #[arg(long)]
            adapter: Option<PathBuf>,
        },
        /// Merge a PEFT LoRA adapter into its base model and write a model folder transformers loads.
        Merge {
            /// The base model folder or llama .gguf file (default: the embedded austen-5m).
            #[arg(long)]
            model: Option<PathBuf>,
            #[arg(long)]
            adapter: PathBuf,
            #[arg(long)]
            out: PathBuf,
        },
        /// Continue a prompt with the model (KV cache; temperature 0 = greedy).
        Generate {
            /// The model folder or llama .gguf file (default: the embedded austen-5m).
            #[arg(long)]
            model: Option<PathBuf>,
            /// Keep the frozen weights in this format on the GPU (default: as stored).
            #[arg(long, value_parser = crate::model_arg::parse_format)]
            base_dtype: Option<WeightFormat>,
            #[arg(long)]
            prompt: String,
            #[arg(long, default_value_t = 50)]
            max_tokens: usize,
            #[arg(long, default_value_t = 0.8)]
            temperature: f32,
            /// Sample only among the k most likely tokens (0 = all).
            #[arg(long, default_value_t = 40)]
            top_k: usize,
            #[arg(long, default_value_t = 0)]
            seed: u64,
            /// A LoRA adapter folder in PEFT's format, merged into the model first.
            #[arg(long)]
            adapter: Option<PathBuf>,
            /// Ask the prompt as a user turn through the model's chat template (the plain
            /// `Question:`/`Answer:` template for a model without one) and print only the answer.
            #[arg(long)]
            chat: bool,
        },
        /// Show the GPU adapter loratab will use and run the GPU self-test against the CPU reference.
        Info {
            /// Print one JSON object instead of text.
            #[arg(long)]
            json: bool,
        },
        /// Train a LoRA adapter on a text file and write it in PEFT's format.
        Train(crate::train_cli::TrainArgs),
        /// Write the run `train` would make (same flags; --out is the folder) for PyTorch: the
        /// examples as jsonl, the starting adapter and a TRL SFTTrainer + PEFT script.
        ExportTrl(crate::train_cli::TrainArgs),
        /// Benchmarks: matmul GFLOP/s, training step time and memory, forward base vs merged vs
        /// unmerged adapter; with --torch, the same cases in PyTorch + PEFT side by side.
        Bench(crate::bench_cli::BenchArgs),
        /// Convert a llama GGUF file (F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors, byte-level BPE vocabulary)
        /// into a Hugging Face model folder: dequantized weights, config.json, tokenizer.json.
        ImportGguf {
            /// The .gguf file.
            file: PathBuf,
            /// The folder to write (created if missing).
            #[arg(long)]
            out: PathBuf,
            /// Store the weights as f16 instead of f32.
            #[arg(long)]
            f16: bool,
        },
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        match cli.command {
            Command::Info { json } => pollster::block_on(info(json)),
            Command::Eval { model, base_dtype, text, seq_len, adapter } => {
                let base = Base { model: model.as_deref(), format: base_dtype, adapter: adapter.as_deref() };
                report(pollster::block_on(eval(&base, &text, seq_len)))
            }
            Command::Generate { model, base_dtype, prompt, max_tokens, temperature, top_k, seed, adapter, chat } => {
                let sampling = Sampling { temperature, top_k, seed };
                let base = Base { model: model.as_deref(), format: base_dtype, adapter: adapter.as_deref() };
                report(pollster::block_on(generate(&base, &prompt, max_tokens, &sampling, chat)))
            }
            Command::Merge { model, adapter, out } => report(merge(model.as_deref(), &adapter, &out)),
            Command::Train(args) => report(crate::train_cli::run(args)),
            Command::ExportTrl(args) => report(crate::train_cli::export_trl(args)),
            Command::Bench(args) => report(crate::bench_cli::run(args)),
            Command::ImportGguf { file, out, f16 } => report(import_gguf(&file, &out, f16)),
        }
    }

    fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    /// What the CLI can fail with, as one sentence.
    #[derive(Debug, thiserror::Error)]
    enum CliError {
        #[error(transparent)]
        Model(#[from] ModelError),
        #[error(transparent)]
        Lora(#[from] LoraError),
        #[error("could not write {path}: {reason}")]
        Write { path: String, reason: String },
        #[error("{path}: {source}")]
        Gguf { path: String, source: GgufError },
        #[error(transparent)]
        Open(#[from] OpenError),
        #[error(transparent)]
        Template(#[from] TemplateError),
        #[error("--out {0} is the base model itself: write the merged model to another folder")]
        OutIsBase(String),
    }

    /// The model the flags name: `--model` (folder, .gguf or the default), `--base-dtype`, `--adapter`.
    struct Base<'a> {
        model: Option<&'a Path>,
        format: Option<WeightFormat>,
        adapter: Option<&'a Path>,
    }

    /// The model in the requested format with the adapter (if any) merged in; an adapter's layers
    /// become f32 (the merge's exact sum), the rest stays compact.
    fn load(base: &Base) -> Result<(Model, Tokenizer), CliError> {
        let (mut model, tokenizer) = Source::open(base.model)?.model(base.format)?;
        if let Some(adapter) = base.adapter {
            lora::merge(&mut model, &Adapter::load_dir(adapter)?)?;
        }
        Ok((model, tokenizer))
    }

    /// The model on the GPU, and the GPU bytes its frozen weights took there (measured).
    async fn open(base: &Base<'_>) -> Result<(GpuContext, GpuModel, Tokenizer, Weights), CliError> {
        let (model, tokenizer) = load(base)?;
        let ctx = GpuContext::new().await;
        let ctx = ctx.map_err(ModelError::from)?;
        let gpu_model = GpuModel::upload(&ctx, &model).await?;
        let weights = Weights { bytes: ctx.memory().live(), formats: crate::model_arg::formats(&model) };
        Ok((ctx, gpu_model, tokenizer, weights))
    }

    /// The frozen weights as they are on the GPU.
    struct Weights {
        bytes: u64,
        formats: String,
    }

    async fn eval(base: &Base<'_>, text: &Path, seq_len: Option<usize>) -> Result<(), CliError> {
        let text = std::fs::read_to_string(text).map_err(|e| ModelError::Io {
            path: text.display().to_string(),
            reason: e.to_string(),
        })?;
        let (ctx, model, tokenizer, weights) = open(base).await?;
        let tokens = tokenizer.encode(&text)?;
        let seq_len = seq_len.unwrap_or(loratab::eval::default_seq_len(model.config.max_positions));
        let r = loratab::eval::eval(&ctx, &model, &tokens, seq_len).await?;
        let weights = serde_json::json!({ "gpu_bytes": weights.bytes, "formats": weights.formats });
        println!("{}", serde_json::json!({ "loss": r.loss, "ppl": r.ppl, "tokens": r.tokens, "weights": weights }));
        Ok(())
    }

    /// The continuation of `prompt` after it; with `chat`, the answer to it as a user turn alone.
    /// Either ends at the model's EOS or end-of-turn token (not printed).
    async fn generate(base: &Base<'_>, prompt: &str, max_tokens: usize, sampling: &Sampling, chat: bool) -> Result<(), CliError> {
        let (ctx, model, tokenizer, _) = open(base).await?;
        let ids = if chat {
            ChatTemplate::for_model(&tokenizer, &model.config)?.chat_prompt(&tokenizer, prompt)?
        } else {
            tokenizer.encode(prompt)?
        };
        if ids.len() >= model.config.max_positions {
            return Err(ModelError::TooLong { tokens: ids.len(), max: model.config.max_positions }.into());
        }
        let out = loratab::generate::generate(&ctx, &model, &ids, max_tokens, sampling, None).await?;
        let text = tokenizer.decode(&out)?;
        if chat { println!("{text}") } else { println!("{prompt}{text}") }
        Ok(())
    }

    /// Write a model folder transformers loads: the base's config.json (saying f32) and tokenizer
    /// files, and model.safetensors merged in f32 (a GGUF base dequantized as ggml does).
    fn merge(model_path: Option<&Path>, adapter: &Path, out: &Path) -> Result<(), CliError> {
        if let Some(path) = model_path {
            // Written files would replace the base's own (or fail on a .gguf file) halfway through.
            let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
            if same(path, out) {
                return Err(CliError::OutIsBase(out.display().to_string()));
            }
        }
        let source = Source::open(model_path)?;
        let (mut model, _) = source.model(None)?;
        lora::merge(&mut model, &Adapter::load_dir(adapter)?)?;
        let write = |name: &str, bytes: &[u8]| {
            let path = out.join(name);
            std::fs::write(&path, bytes).map_err(|e| CliError::Write { path: path.display().to_string(), reason: e.to_string() })
        };
        std::fs::create_dir_all(out).map_err(|e| CliError::Write { path: out.display().to_string(), reason: e.to_string() })?;
        for (name, bytes) in source.folder_files()? {
            write(name, &bytes)?;
        }
        drop(source);
        write("model.safetensors", &loratab::model::save_safetensors(&model.to_tensors())?)?;
        println!("merged model written to {}", out.display());
        Ok(())
    }

    /// Dequantize `file` into the model folder `out` and print a one-line summary.
    fn import_gguf(file: &Path, out: &Path, f16: bool) -> Result<(), CliError> {
        let gguf_error = |source| CliError::Gguf { path: file.display().to_string(), source };
        let bytes = std::fs::read(file)
            .map_err(|e| ModelError::Io { path: file.display().to_string(), reason: e.to_string() })?;
        let imported = loratab::gguf::import(&bytes).map_err(gguf_error)?;
        drop(bytes);
        let write_error = |path: &Path, e: std::io::Error| CliError::Write { path: path.display().to_string(), reason: e.to_string() };
        std::fs::create_dir_all(out).map_err(|e| write_error(out, e))?;
        for (name, content) in imported.files(f16).map_err(gguf_error)? {
            let path = out.join(name);
            std::fs::write(&path, content).map_err(|e| write_error(&path, e))?;
        }
        let kinds: Vec<String> = imported.kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
        println!(
            "imported {}{:.1}M parameters, {} layers, vocabulary {} (tensors: {}) into {} as {}",
            imported.name.as_deref().map(|n| format!("{n}: ")).unwrap_or_default(),
            imported.num_params() as f64 / 1e6,
            imported.config["num_hidden_layers"],
            imported.config["vocab_size"],
            kinds.join(", "),
            out.display(),
            if f16 { "f16" } else { "f32" },
        );
        Ok(())
    }

    async fn info(json: bool) -> ExitCode {
        let ctx = match GpuContext::new().await {
            Ok(ctx) => ctx,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        let adapter = ctx.adapter();
        let checks = match loratab::selftest::run(&ctx).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: the self-test could not run: {e}");
                return ExitCode::FAILURE;
            }
        };
        let passed = checks.iter().all(|c| c.passed);
        if json {
            let out = serde_json::json!({ "adapter": adapter, "checks": checks, "passed": passed });
            println!("{out}");
        } else {
            println!("GPU: {} ({}, {}) driver {}", adapter.name, adapter.backend, adapter.device_type, adapter.driver);
            println!(
                "limits: buffer {} MiB, storage binding {} MiB, workgroup memory {} KiB",
                adapter.max_buffer_size >> 20,
                adapter.max_storage_binding >> 20,
                adapter.max_workgroup_storage >> 10
            );
            for c in &checks {
                let verdict = if c.passed { "ok  " } else { "FAIL" };
                println!("{verdict} {:<32} max error {:.2e} (tolerance {:.0e})", c.name, c.max_error, c.tolerance);
            }
            println!("self-test {}", if passed { "passed" } else { "FAILED" });
        }
        if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}
