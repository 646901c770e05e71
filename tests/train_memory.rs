//! Training GPU memory = frozen weights + activations + adapter with its gradients and AdamW's two
//! moments, and nothing else: `train::memory::estimate` (worked out before allocating) against the
//! bytes `GpuContext::memory()` measures as the model, adapter and session are set up, and the peak
//! over training steps (no allocation inside the loop: no tensors, and no uniform buffers or bind
//! groups after the first step). Runs natively and in headless Chromium.

mod common;
use common::gpu;

use loratab::lora::{Adapter, LoraOptions, Target};
use loratab::model::{GpuModel, Model, ModelFiles};
use loratab::train::{memory, new_lora, Session, TrainSettings};

const TEXT: &str = include_str!("fixtures/eval.txt");

macro_rules! files {
    ($name:literal) => {
        ModelFiles {
            config: include_str!(concat!("fixtures/", $name, "/config.json")).to_string(),
            weights: vec![("model.safetensors".into(), include_bytes!(concat!("fixtures/", $name, "/model.safetensors")).to_vec())],
            tokenizer: include_bytes!(concat!("fixtures/", $name, "/tokenizer.json")).to_vec(),
        }
    };
}

async fn check(files: ModelFiles, targets: &str, rank: usize, batch: usize, seq_len: usize) {
    let opts = LoraOptions { rank, alpha: 2.0 * rank as f32, targets: Target::parse_list(targets).unwrap(), ..LoraOptions::default() };
    check_with(files, opts, batch, seq_len).await
}

async fn check_with(files: ModelFiles, opts: LoraOptions, batch: usize, seq_len: usize) {
    let ctx = gpu().await;
    let (model, tok) = Model::from_files(&files).unwrap();
    let targets: Vec<&str> = opts.targets.iter().map(|t| t.name()).collect();
    let (targets, rank) = (targets.join(","), opts.rank);
    let settings = TrainSettings { steps: 3, batch, seq_len, log_every: 1, ..TrainSettings::default() };
    let adapter = Adapter::from_options(&model.config, &opts).unwrap();
    let budget = memory::estimate(&model.config, &adapter, &settings);
    let what = format!("{} {targets} r={rank} B={batch} T={seq_len}", model.config.model_type);

    assert_eq!(ctx.memory().live(), 0);
    let gm = GpuModel::upload(&ctx, &model).await.unwrap();
    let weights = ctx.memory().live();
    // Independent of the estimate: every parameter of the host model, once, in f32.
    assert_eq!(weights, 4 * model.num_params() as u64, "{what}: weights on the GPU");
    assert_eq!(weights, budget.weights, "{what}: weights estimate");

    let lora = new_lora(&ctx, &gm, &opts).await.unwrap();
    let trainable = ctx.memory().live() - weights;
    let adapter_values: usize = adapter.modules.values().map(|m| m.a.data.len() + m.b.data.len()).sum();
    // Value, gradient, first and second moment of each adapter value; nothing for frozen weights.
    assert_eq!(trainable, 16 * adapter_values as u64, "{what}: adapter + AdamW state");
    assert_eq!(trainable, budget.adapter + budget.optimizer, "{what}: adapter estimate");

    let mut session = Session::new(&ctx, &gm, tok.encode(TEXT).unwrap(), lora, settings).await.unwrap();
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

gpu_test! {
    async fn dropout_memory_matches_budget() {
        // Dropout turns the one-word placeholder into a [B·T, widest in] buffer (down's in = ffn).
        let ctx_files = files!("llama-tiny");
        let (model, _) = Model::from_files(&ctx_files).unwrap();
        let plain = LoraOptions { targets: Target::parse_list("q,v,down").unwrap(), ..LoraOptions::default() };
        let dropped = LoraOptions { dropout: 0.1, ..plain.clone() };
        let s = TrainSettings { batch: 2, seq_len: 16, ..TrainSettings::default() };
        let a = memory::estimate(&model.config, &Adapter::from_options(&model.config, &plain).unwrap(), &s);
        let b = memory::estimate(&model.config, &Adapter::from_options(&model.config, &dropped).unwrap(), &s);
        assert_eq!(b.activations - a.activations, 4 * 32 * model.config.intermediate_size as u64 - 4);
        check_with(files!("llama-tiny"), dropped, 2, 16).await;
    }
}
