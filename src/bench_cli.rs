//! `loratab bench`: run `loratab::bench`'s cases here and, with `--torch PYTHON`, the same cases in
//! PyTorch + PEFT (`tools/bench_torch.py`, handed the cases as JSON), then print one table with a
//! ratio beside every figure. `--compare FILE` reads PyTorch's results from an earlier run instead.

use std::path::PathBuf;

use clap::Args;
use loratab::bench::{self, BenchError, BenchOptions, Results};
use loratab::model::WeightFormat;
use loratab::gpu::GpuContext;

#[derive(Args)]
pub struct BenchArgs {
    /// Sections to run, comma-separated: matmul, train (with memory), forward, generate, profile.
    #[arg(long, default_value = "matmul,train,forward,generate")]
    only: String,
    /// GPU time per kernel kind (matmul, attention, norms, ...) of one training step and one
    /// generated token per model (timestamp queries; wall time per dispatch where the GPU has none).
    /// Alone it runs only the profile; with --only it adds the profile to those sections.
    #[arg(long)]
    profile: bool,
    /// Model shapes (random weights): default (models/austen-5m's shape), gpt2 (124M), smollm2 (135M),
    /// qwen0.5b (Qwen2.5-0.5B's shape; not in the default set).
    #[arg(long, default_value = "default,gpt2,smollm2")]
    models: String,
    /// Frozen-weight formats of the matmul, train and generate sections: f32, f16, bf16, q8_0, q4_0,
    /// q4_1 (PyTorch runs the f32 cases only; the default model ships in f16).
    #[arg(long, default_value = "f32")]
    formats: String,
    /// Train with gradient checkpointing.
    #[arg(long)]
    grad_checkpoint: bool,
    /// Tokens per window for training (the forward section and the matmul rows use the first).
    #[arg(long, default_value = "128,256")]
    seqs: String,
    /// Windows per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed training steps per case (after --warmup untimed ones); 0 with --warmup 0 measures the
    /// training memory only.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// LoRA ranks of the forward section.
    #[arg(long, default_value = "1,4,8,16,64")]
    ranks: String,
    /// Models of the forward section.
    #[arg(long, default_value = "default")]
    forward_models: String,
    /// Forward passes timed per variant (the median is reported).
    #[arg(long, default_value_t = 7)]
    forward_reps: usize,
    /// Models of the generate section (greedy, a prompt of the first --seqs tokens).
    #[arg(long, default_value = "default,smollm2")]
    generate_models: String,
    /// New tokens per generation in the generate section.
    #[arg(long, default_value_t = 16)]
    new_tokens: usize,
    /// Only the default model at seq 128 (a minute on a software GPU).
    #[arg(long)]
    quick: bool,
    /// Also run the cases with PyTorch + PEFT using this Python interpreter.
    #[arg(long)]
    torch: Option<PathBuf>,
    /// The PyTorch side's script.
    #[arg(long, default_value = "tools/bench_torch.py")]
    torch_script: PathBuf,
    /// PyTorch's device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    torch_device: String,
    /// PyTorch results (JSON) of an earlier run with the same cases, instead of --torch.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Write both sides' results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchCliError {
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error("{0}")]
    Usage(String),
    #[error("the PyTorch side failed: {0}")]
    Torch(String),
}

fn list<T: std::str::FromStr>(flag: &str, s: &str) -> Result<Vec<T>, BenchCliError> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| x.trim().parse().map_err(|_| BenchCliError::Usage(format!("--{flag}: `{x}` is not valid"))))
        .collect()
}

/// Results from `path`: the PyTorch script's output, or a whole `--json` file of an earlier run —
/// its PyTorch side if it has one, else its loratab side (as "loratab before": a before/after table).
fn read_results(path: &std::path::Path) -> Result<Results, BenchCliError> {
    let bad = |e: String| BenchCliError::Torch(format!("{}: {e}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut before = false;
    if value.get("rows").is_none() {
        value = match (value.get("torch").filter(|t| !t.is_null()), value.get("loratab")) {
            (Some(t), _) => t.clone(),
            (None, Some(l)) => {
                before = true;
                l.clone()
            }
            _ => return Err(bad("neither results nor a `loratab bench --json` file".into())),
        };
    }
    let mut results: Results = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if before {
        results.tool = "loratab before".into();
    }
    Ok(results)
}

pub fn run(args: BenchArgs) -> Result<(), BenchCliError> {
    let mut opts = BenchOptions {
        only: list("only", &args.only)?,
        models: list("models", &args.models)?,
        seqs: list("seqs", &args.seqs)?,
        batch: args.batch,
        steps: if args.warmup == 0 { args.steps } else { args.steps.max(1) },
        warmup: args.warmup,
        ranks: list("ranks", &args.ranks)?,
        forward_reps: args.forward_reps.max(1),
        forward_models: list("forward-models", &args.forward_models)?,
        formats: list::<String>("formats", &args.formats)?
            .iter()
            .map(|f| WeightFormat::parse(f).ok_or_else(|| BenchCliError::Usage(format!("--formats: `{f}` is not one of f32, f16, bf16, q8_0, q4_0, q4_1"))))
            .collect::<Result<_, _>>()?,
        grad_checkpoint: args.grad_checkpoint,
        generate_models: list("generate-models", &args.generate_models)?,
        new_tokens: args.new_tokens,
    };
    if args.profile {
        let only_given = std::env::args().any(|a| a == "--only" || a.starts_with("--only="));
        if !only_given {
            opts.only.clear();
        }
        opts.only.push("profile".into());
    }
    if args.quick {
        opts.models = vec!["default".into()];
        opts.forward_models = vec!["default".into()];
        opts.generate_models = vec!["default".into()];
        opts.seqs = vec![128];
    }
    let cases = bench::cases(&opts)?;
    let ctx = pollster::block_on(GpuContext::new()).map_err(BenchError::from)?;
    // The matmul section tunes its shapes itself; the other sections run tuned as the CLI does.
    ctx.set_tuning(loratab::gpu::tune::wanted());
    let a = ctx.adapter();
    eprintln!("loratab: {} ({}, {}), driver {}", a.name, a.backend, a.device_type, a.driver);
    let log = |line: &str| eprintln!("{line}");
    let ours = pollster::block_on(bench::run(&ctx, &cases, &log))?;
    drop(ctx);

    let theirs = match (&args.torch, &args.compare) {
        (_, Some(file)) => Some(read_results(file)?),
        (Some(python), None) => {
            let dir = std::env::temp_dir().join(format!("loratab-bench-{}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| BenchCliError::Torch(e.to_string()))?;
            let (case_file, out_file) = (dir.join("cases.json"), dir.join("torch.json"));
            std::fs::write(&case_file, serde_json::to_string_pretty(&cases).unwrap()).map_err(|e| BenchCliError::Torch(e.to_string()))?;
            eprintln!("PyTorch: {} {} on {}", python.display(), args.torch_script.display(), args.torch_device);
            let status = std::process::Command::new(python)
                .arg(&args.torch_script)
                .arg(&case_file)
                .arg(&out_file)
                .args(["--device", &args.torch_device])
                .status()
                .map_err(|e| BenchCliError::Torch(format!("could not start {}: {e}", python.display())))?;
            if !status.success() {
                return Err(BenchCliError::Torch(format!("{} exited with {status}", args.torch_script.display())));
            }
            Some(read_results(&out_file)?)
        }
        (None, None) => None,
    };

    println!("loratab: {} — {}", ours.device, ours.backend);
    if let Some(t) = &theirs {
        println!("{}: {} — {}", t.tool, t.device, t.backend);
    }
    println!();
    if !ours.rows.is_empty() {
        print!("{}", bench::table(&ours, theirs.as_ref()));
    }
    print!("{}", bench::profile_tables(&ours));
    if let Some(path) = &args.json {
        let both = serde_json::json!({ "cases": cases, "loratab": ours, "torch": theirs });
        std::fs::write(path, serde_json::to_string_pretty(&both).unwrap())
            .map_err(|e| BenchCliError::Usage(format!("could not write {}: {e}", path.display())))?;
    }
    Ok(())
}
