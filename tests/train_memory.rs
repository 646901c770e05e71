//! Training GPU memory = frozen weights + activations + adapter with its gradients and AdamW's two
//! moments, and nothing else: `train::memory::estimate` (worked out before allocating) against the
//! bytes `GpuContext::memory()` measures as the model, adapter and session are set up, and the peak
//! over training steps (no allocation inside the loop: no tensors, and no uniform buffers or bind
//! groups after the first step). Runs natively and in headless Chromium.

mod common;
use common::gpu;

use loratab::lora::{Adapter, LoraOptions, Target};
use loratab::model::{GpuModel, Mlp, Model, ModelFiles, Weight, WeightFormat};
use loratab::train::{memory, new_lora, Session, TrainSettings};

const TEXT: &str = include_str!("fixtures/eval.txt");

macro_rules! files {
    ($name:literal) => {
        ModelFiles {
            config: include_str!(concat!("fixtures/", $name, "/config.json")).to_string(),
            weights: vec![("model.safetensors".into(), include_bytes!(concat!("fixtures/", $name, "/model.safetensors")).to_vec())],
            tokenizer: include_bytes!(concat!("fixtures/", $name, "/tokenizer.json")).to_vec(),
            ..Default::default()
        }
    };
}

async fn check(files: ModelFiles, targets: &str, rank: usize, batch: usize, seq_len: usize) {
    let opts = LoraOptions { rank, alpha: 2.0 * rank as f32, targets: Target::parse_list(targets).unwrap(), ..LoraOptions::default() };
    check_with(files, opts, batch, seq_len, false).await;
}

/// Estimate against measurement for one run; the budget checked.
async fn check_with(files: ModelFiles, opts: LoraOptions, batch: usize, seq_len: usize, grad_checkpoint: bool) -> memory::MemoryBudget {
    let (model, tok) = Model::from_files(&files).unwrap();
    check_model(model, tok.encode(TEXT).unwrap(), opts, batch, seq_len, grad_checkpoint).await
}

/// GPU bytes of every parameter once: weight matrices at their format's size per value (the GPU
/// layouts of model/weight.rs: f16/bf16 2 bytes, Q8_0 36 and Q4_0/Q4_1 20 bytes per 32 values, a
/// buffer rounded up to whole words), everything else (norms, biases, positions) f32.
fn stored_bytes(model: &Model) -> u64 {
    let mut matrices: Vec<&Weight> = vec![&model.token_embedding];
    for b in &model.blocks {
        matrices.extend([&b.q.weight, &b.k.weight, &b.v.weight, &b.o.weight]);
        match &b.mlp {
            Mlp::Gelu { fc, proj } => matrices.extend([&fc.weight, &proj.weight]),
            Mlp::SwiGlu { gate, up, down } => matrices.extend([&gate.weight, &up.weight, &down.weight]),
        }
    }
    matrices.extend(model.lm_head.as_ref().map(|h| &h.weight));
    let size = |w: &Weight| -> u64 {
        let (bytes, values) = match w.format {
            WeightFormat::F32 => (4, 1),
            WeightFormat::F16 | WeightFormat::Bf16 => (2, 1),
            WeightFormat::Q8_0 => (36, 32),
            WeightFormat::Q4_0 | WeightFormat::Q4_1 => (20, 32),
        };
        ((w.len() * bytes).div_ceil(values).div_ceil(4) * 4) as u64
    };
    let matrix_values: usize = matrices.iter().map(|w| w.len()).sum();
    4 * (model.num_params() - matrix_values) as u64 + matrices.into_iter().map(size).sum::<u64>()
}

/// Estimate against measurement for `model` (already in the format to test).
async fn check_model(model: Model, tokens: Vec<u32>, opts: LoraOptions, batch: usize, seq_len: usize, grad_checkpoint: bool) -> memory::MemoryBudget {
    let ctx = gpu().await;
    let targets: Vec<&str> = opts.targets.iter().map(|t| t.name()).collect();
    let (targets, rank) = (targets.join(","), opts.rank);
    let settings = TrainSettings { steps: 3, batch, seq_len, log_every: 1, grad_checkpoint, ..TrainSettings::default() };
    let adapter = Adapter::from_options(&model.config, &opts).unwrap();
    let budget = memory::estimate(memory::weights(&model, ctx.max_binding()), &model.config, &adapter, &settings);
    let formats: Vec<String> = model.weight_formats().iter().map(|(f, n)| format!("{f} ×{n}")).collect();
    let what = format!("{} ({}) {targets} r={rank} B={batch} T={seq_len} checkpointing {grad_checkpoint}", model.config.model_type, formats.join(", "));

    assert_eq!(ctx.memory().live(), 0);
    let gm = GpuModel::upload(&ctx, &model).await.unwrap();
    let weights = ctx.memory().live();
    // Independent of the estimate: every parameter of the host model once, at its format's size.
    assert_eq!(weights, stored_bytes(&model), "{what}: weights on the GPU");
    assert_eq!(weights, gm.weight_bytes(), "{what}: the GPU model's own count");
    assert_eq!(weights, budget.weights, "{what}: weights estimate");

    let lora = new_lora(&ctx, &gm, &opts).await.unwrap();
    let trainable = ctx.memory().live() - weights;
    let adapter_values: usize = adapter.modules.values().map(|m| m.a.data.len() + m.b.data.len()).sum();
    // Value, gradient, first and second moment of each adapter value; nothing for frozen weights.
    assert_eq!(trainable, 16 * adapter_values as u64, "{what}: adapter + AdamW state");
    assert_eq!(trainable, budget.adapter + budget.optimizer, "{what}: adapter estimate");

    let mut session = Session::new(&ctx, &gm, tokens, lora, settings).await.unwrap();
    let activations = ctx.memory().live() - weights - trainable;
    assert_eq!(activations, budget.activations, "{what}: activations estimate");
    assert_eq!(ctx.memory().live(), budget.total());

    ctx.memory().reset_peak();
    let mut made = 0;
    for step in 0..3 {
        let report = session.step(&ctx, &gm).await.unwrap();
        assert!(report.loss.unwrap().is_finite());
        // Uniform buffers and bind groups are made in the first step only, then reused.
        if step == 0 {
            made = session.dispatch_objects_created();
            assert!(made > 0, "{what}: the dispatch caches were not used");
        }
        assert_eq!(session.dispatch_objects_created(), made, "{what}: step {} made GPU objects", step + 1);
    }
    assert_eq!(ctx.memory().peak(), budget.total(), "{what}: the training loop allocated tensors");
    drop(session);
    drop(gm);
    assert_eq!(ctx.memory().live(), 0, "{what}: everything is released");
    budget
}

gpu_test! {
    async fn llama_memory_matches_budget() {
        check(files!("llama-tiny"), "q,v", 4, 2, 16).await;
        check(files!("llama-tiny"), "q,k,v,o,gate,up,down", 8, 3, 32).await;
    }
}

gpu_test! {
    async fn gpt2_memory_matches_budget() {
        // q and v only: c_attn's k rows of B are allocated but frozen.
        check(files!("gpt2-tiny"), "q,v", 4, 2, 16).await;
        check(files!("gpt2-tiny"), "q,k,v,o,up,down", 2, 1, 32).await;
    }
}

gpu_test! {
    async fn qwen2_memory_matches_budget() {
        check(files!("qwen2-tiny"), "q,k,v,o", 4, 2, 24).await;
    }
}

/// A llama with 32-multiple dimensions, stored in f16 (tied head).
fn llama_f16() -> ModelFiles {
    files!("lora/llama-f16/base")
}

gpu_test! {
    /// Frozen weights kept compact count at their compact size: f16 as stored, and quantized to
    /// Q4_0 and Q8_0 (`--base-dtype`), the whole budget still exact.
    async fn compact_memory_matches_budget() {
        let opts = LoraOptions { rank: 4, targets: Target::parse_list("q,v,down").unwrap(), ..LoraOptions::default() };
        let (f16, tok) = Model::from_files(&llama_f16()).unwrap();
        let tokens = tok.encode(TEXT).unwrap();
        assert_eq!(f16.weight_formats().keys().collect::<Vec<_>>(), [&WeightFormat::F16]);
        let f32_bytes = 4 * f16.num_params() as u64;
        let b = check_model(f16.clone(), tokens.clone(), opts.clone(), 2, 16, false).await;
        assert!(b.weights < f32_bytes * 55 / 100, "f16: {} of {f32_bytes} bytes", b.weights);
        for format in [WeightFormat::Q4_0, WeightFormat::Q8_0] {
            let mut model = f16.clone();
            model.convert_weights(format).unwrap();
            let b = check_model(model, tokens.clone(), opts.clone(), 2, 16, false).await;
            assert!(b.weights < f32_bytes * 35 / 100, "{format}: {} of {f32_bytes} bytes", b.weights);
        }
    }
}

gpu_test! {
    /// Compact weights larger than one binding are cut into row blocks; the estimate counts the
    /// same blocks (upload only: activations this small a binding cannot hold are not the point).
    async fn split_compact_weights_match_budget() {
        let (mut model, _) = Model::from_files(&llama_f16()).unwrap();
        model.convert_weights(WeightFormat::Q4_1).unwrap();
        let ctx = gpu().await;
        // The tied embedding (300 rows of 2 Q4_1 blocks) and the MLP matrices exceed 4000 bytes.
        ctx.set_max_binding(4000);
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        assert!(gm.token_embedding.parts.len() > 1, "the embedding should be split");
        assert_eq!(ctx.memory().live(), memory::weights(&model, 4000));
        assert_eq!(ctx.memory().live(), stored_bytes(&model));
    }
}

gpu_test! {
    async fn dropout_memory_matches_budget() {
        // Dropout turns the one-word placeholder into a [B·T, widest in] buffer (down's in = ffn).
        let ctx_files = files!("llama-tiny");
        let (model, _) = Model::from_files(&ctx_files).unwrap();
        let plain = LoraOptions { targets: Target::parse_list("q,v,down").unwrap(), ..LoraOptions::default() };
        let dropped = LoraOptions { dropout: 0.1, ..plain.clone() };
        let s = TrainSettings { batch: 2, seq_len: 16, ..TrainSettings::default() };
        let frozen = memory::weights(&model, u64::MAX);
        let a = memory::estimate(frozen, &model.config, &Adapter::from_options(&model.config, &plain).unwrap(), &s);
        let b = memory::estimate(frozen, &model.config, &Adapter::from_options(&model.config, &dropped).unwrap(), &s);
        assert_eq!(b.activations - a.activations, 4 * 32 * model.config.intermediate_size as u64 - 4);
        check_with(files!("llama-tiny"), dropped, 2, 16, false).await;
    }
}

gpu_test! {
    /// With gradient checkpointing the trainer allocates exactly the estimate too, and less than
    /// without: per layer beyond the first, everything a block keeps except its input.
    async fn checkpointing_memory_matches_budget() {
        let llama = LoraOptions { dropout: 0.1, targets: Target::parse_list("q,v,down").unwrap(), ..LoraOptions::default() };
        let gpt2 = LoraOptions { targets: Target::parse_list("q,v,up").unwrap(), ..LoraOptions::default() };
        for (files, opts) in [(files!("llama-tiny"), llama), (files!("gpt2-tiny"), gpt2)] {
            let (model, _) = Model::from_files(&files).unwrap();
            let c = &model.config;
            let (batch, seq) = (2, 16);
            let kept = check_with(files.clone(), opts.clone(), batch, seq, true).await;
            let all = check_with(files, opts, batch, seq, false).await;
            // What one block keeps besides its input, counted from the config: h1, q, k, v, the
            // attention output, x_mid, h2, the MLP's activations, and each window's probabilities.
            let n = batch * seq;
            let (d, f, qd, kvd) = (c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim);
            let mlp = if c.model_type == "gpt2" { 2 * n * f + 1 } else { 3 * n * f };
            let per_layer = 3 * n * d + n * qd + 2 * n * kvd + n * qd + mlp + batch * c.num_heads * seq * seq;
            let saved = (c.num_layers - 1) as u64 * 4 * per_layer as u64;
            assert!(c.num_layers > 1);
            assert_eq!(all.activations - kept.activations, saved, "{}: checkpointing saves", c.model_type);
            assert_eq!(all.total() - kept.total(), saved);
        }
    }
}

/// A Qwen2.5-0.5B-shaped config (d 896, 24 layers, 14/2 heads of 64, ffn 4864, vocab 151936, tied).
const QWEN_0_5B: &str = r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896,
  "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
  "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "tie_word_embeddings": true,
  "vocab_size": 151936, "hidden_act": "silu"}"#;

gpu_test! {
    /// The LM head and the loss run a chunk of rows at a time: logits (and their gradient) take the
    /// same few MiB at one window as at eight, where keeping all of them would take over a GB.
    async fn logits_memory_does_not_grow_with_the_batch() {
        use loratab::model::Config;
        let c = Config::from_json(QWEN_0_5B).unwrap();
        let v = c.vocab_size as u64;
        let opts = LoraOptions { rank: 8, targets: Target::parse_list("q,v").unwrap(), ..LoraOptions::default() };
        let adapter = Adapter::from_options(&c, &opts).unwrap();
        let settings = |batch, grad_checkpoint| TrainSettings { batch, seq_len: 256, grad_checkpoint, ..TrainSettings::default() };
        // Only a config here (no 2 GB of weights): the frozen weights are left out of these budgets.
        let budget = |batch, grad_checkpoint| memory::estimate(0, &c, &adapter, &settings(batch, grad_checkpoint));
        let (one, eight) = (budget(1, false), budget(8, false));
        assert_eq!(one.logits, eight.logits);
        assert!(one.logits <= 2 * (16 << 20) && one.logits >= 2 * 4 * v, "{} bytes of logits", one.logits);
        // What the vocabulary adds to the activations (against twice the vocabulary) is the same at
        // one window as at eight: all logits at once would make it grow eightfold.
        let doubled = loratab::model::Config { vocab_size: 2 * c.vocab_size, ..c.clone() };
        let vocab_part = |batch| memory::estimate(0, &doubled, &adapter, &settings(batch, false)).activations as i64 - budget(batch, false).activations as i64;
        assert_eq!(vocab_part(1), vocab_part(8));
        assert!(vocab_part(1).unsigned_abs() < 4 << 20, "{}", vocab_part(1));
        // A batch smaller than a chunk keeps all its rows' logits: a window of 4 tokens.
        let small = memory::estimate(0, &c, &adapter, &TrainSettings { batch: 1, seq_len: 4, ..TrainSettings::default() });
        assert_eq!(small.logits, 2 * 4 * 4 * v);
        for grad_checkpoint in [false, true] {
            let b = budget(4, grad_checkpoint);
            println!(
                "Qwen2.5-0.5B shape, batch 4 x 256, r=8 q,v, checkpointing {grad_checkpoint}: activations {} (logits {}) + adapter {} + AdamW {} = {} besides the frozen weights",
                memory::human(b.activations), memory::human(b.logits), memory::human(b.adapter),
                memory::human(b.optimizer), memory::human(b.total())
            );
        }
    }
}

gpu_test! {
    /// A run with a tensor larger than one binding is refused before it allocates anything: the
    /// error names the tensor and the GPU's memory is what it was.
    async fn oversized_activation_is_refused_before_allocating() {
        let ctx = gpu().await;
        let (model, tok) = Model::from_files(&files!("llama-tiny")).unwrap();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let opts = LoraOptions { rank: 4, alpha: 8.0, targets: Target::parse_list("q,v").unwrap(), ..LoraOptions::default() };
        let lora = new_lora(&ctx, &gm, &opts).await.unwrap();
        let before = ctx.memory().live();
        ctx.memory().reset_peak();
        // The largest activation of 4 × 32 tokens is an [128, 74] MLP buffer (37,888 bytes).
        ctx.set_max_binding(32 << 10);
        let settings = TrainSettings { steps: 2, batch: 4, seq_len: 32, ..TrainSettings::default() };
        let err = Session::new(&ctx, &gm, tok.encode(TEXT).unwrap(), lora, settings).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("the activation `") && err.to_string().contains("4 windows of 32 tokens"), "{err}");
        // Nothing was allocated on the way (the peak never rose); the adapter went with the session.
        assert_eq!(ctx.memory().peak(), before, "nothing was allocated");
        assert!(ctx.memory().live() < before);
    }
}
