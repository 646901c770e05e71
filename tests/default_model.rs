//! The embedded default model (models/austen-5m, tools/pretrain.py) as shipped: it fits the 12 MB
//! budget, its tokenizer gives the ids Python's `tokenizers` gave, and the GPU scores the held-out
//! text as transformers did (tests/fixtures/default-model/golden.json, written by the export).
//! Natively and in headless Chromium; the CLI test at the end is native only.

mod common;
use common::gpu;

use loratab::model::{GpuModel, Model, ModelFiles, Pick, Picked};

const CONFIG: &str = include_str!("../models/austen-5m/config.json");
const WEIGHTS: &[u8] = include_bytes!("../models/austen-5m/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("../models/austen-5m/tokenizer.json");
const HELDOUT: &str = include_str!("fixtures/default-model/heldout.txt");
const GOLDEN: &str = include_str!("fixtures/default-model/golden.json");

fn files() -> ModelFiles {
    ModelFiles {
        config: CONFIG.to_string(),
        weights: vec![("model.safetensors".into(), WEIGHTS.to_vec())],
        tokenizer: TOKENIZER.to_vec(),
        generation_config: None,
        tokenizer_config: None,
    }
}

fn golden() -> serde_json::Value {
    serde_json::from_str(GOLDEN).unwrap()
}

gpu_test! {
    async fn default_model_is_small_and_tokenizes_like_python() {
        let bytes = CONFIG.len() + WEIGHTS.len() + TOKENIZER.len();
        assert!(bytes <= 12_000_000, "the default model takes {bytes} bytes, over 12 MB");
        let (model, tok) = Model::from_files(&files()).unwrap();
        assert_eq!(model.config.model_type, "llama");
        assert_eq!(model.config.vocab_size, 4096);
        assert!((4_000_000..7_000_000).contains(&model.num_params()), "{} parameters", model.num_params());
        let want: Vec<u32> = golden()["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.encode(HELDOUT).unwrap(), want);
    }
}

gpu_test! {
    async fn default_model_scores_heldout_text_like_transformers() {
        let ctx = gpu().await;
        let (model, tok) = Model::from_files(&files()).unwrap();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let g = golden();
        let tokens = tok.encode(HELDOUT).unwrap();
        let r = loratab::eval::eval(&ctx, &gm, &tokens, g["seq_len"].as_u64().unwrap() as usize).await.unwrap();
        let want = g["loss"].as_f64().unwrap();
        assert_eq!(r.tokens as u64, g["tokens"].as_u64().unwrap());
        assert!((r.loss - want).abs() <= 1e-4, "loratab {} vs transformers {want}", r.loss);
    }
}

gpu_test! {
    /// Decode steps, one token at a time after a prompt, give the full pass's logits. On a CPU
    /// device they run the fused decode kernels (matvec_qkv; matvec_pair's `mlp`, which the tiny
    /// fixtures' 74 hidden units do not fit, so only this model takes it), and the full pass the
    /// tiled ones: every step is also counted, 3 dispatches a layer there (q/k/v with the norm
    /// before them, attention with o, MLP) + embedding, final norm and LM head; 4 a layer (the
    /// residual norm apart) where the device binds fewer than the 10 storage buffers of q/k/v's
    /// `normed`. Generation's decode step (`decode_step`, its logits) at each position too: one
    /// dispatch fewer, the LM head taking the final norm (`matvec_qkv`'s `head`).
    async fn default_model_decode_steps_match_the_full_pass() {
        let ctx = gpu().await;
        let (model, tok) = Model::from_files(&files()).unwrap();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let tokens = tok.encode(HELDOUT).unwrap()[..16].to_vec();
        let (v, layers) = (model.config.vocab_size, model.config.num_layers);
        let full = ctx.read(&gm.forward(&ctx, &tokens, 0).await.unwrap()).await.unwrap();
        assert_eq!(full.len(), tokens.len() * v);
        gm.forward(&ctx, &tokens[..12], 0).await.unwrap();
        for (i, &t) in tokens.iter().enumerate().skip(12) {
            let before = ctx.dispatches_submitted();
            let step = gm.forward(&ctx, &[t], i).await.unwrap();
            let dispatches = ctx.dispatches_submitted() - before;
            let step = ctx.read(&step).await.unwrap();
            let e = common::max_rel_error(&step, &full[i * v..(i + 1) * v], &format!("position {i}"));
            assert!(e < 1e-4, "position {i}: decode step vs full pass, max error {e}");
            // The same position again as generation runs it: the head takes the final norm.
            let before = ctx.dispatches_submitted();
            let Picked::Logits(decoded) = gm.decode_step(&ctx, &[t], i, None, Pick::Logits).await.unwrap() else { panic!("Pick::Logits gives logits") };
            let decode_dispatches = ctx.dispatches_submitted() - before;
            let e = common::max_rel_error(&decoded, &full[i * v..(i + 1) * v], &format!("position {i}, decode step"));
            assert!(e < 1e-4, "position {i}: generation's decode step vs full pass, max error {e}");
            if ctx.is_cpu() {
                let storage = ctx.device.limits().max_storage_buffers_per_shader_stage;
                let per_layer = if storage >= 10 { 3 } else { 4 };
                if i == 12 {
                    eprintln!("{storage} storage buffers a stage: {per_layer} dispatches a layer");
                }
                assert_eq!(dispatches, 3 + per_layer * layers, "position {i}: a step's dispatches on a CPU device ({storage} storage buffers a stage)");
                assert_eq!(decode_dispatches, 2 + per_layer * layers, "position {i}: a decode step's dispatches on a CPU device, the final norm in the head ({storage} storage buffers a stage)");
            }
        }
    }
}

gpu_test! {
    /// Greedy generation submits each step before reading the previous one, which hands over its
    /// token on the GPU: the tokens must be the argmax of full passes over the growing text (lowest id
    /// on ties, as the GPU's pick), and a stop id must end the output where it first appears, the
    /// step already submitted past it discarded.
    async fn default_model_greedy_generation_chains_its_steps_on_the_gpu() {
        use loratab::generate::{generate, generate_until, sample, Sampling};
        use loratab::model::{Pick, StepInput};
        let ctx = gpu().await;
        let (model, tok) = Model::from_files(&files()).unwrap();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let v = model.config.vocab_size;
        let prompt = tok.encode(HELDOUT).unwrap()[..12].to_vec();
        let greedy = Sampling { temperature: 0.0, top_k: 0, seed: 0 };
        let mut text = prompt.clone();
        let mut want = Vec::new();
        for _ in 0..8 {
            let logits = ctx.read(&gm.forward(&ctx, &text, 0).await.unwrap()).await.unwrap();
            let id = sample(&logits[(text.len() - 1) * v..], &greedy, &mut loratab::rng::Rng::new(0));
            want.push(id);
            text.push(id);
        }
        let got = generate(&ctx, &gm, &prompt, want.len(), &greedy, None).await.unwrap();
        assert_eq!(got, want, "chained greedy steps vs full passes");
        // The first token from the third on that did not come before it, as the stop.
        let j = (2..want.len()).find(|&j| !want[..j].contains(&want[j])).expect("eight tokens, not all repeats");
        let stopped = generate_until(&ctx, &gm, &prompt, want.len(), &greedy, None, &[want[j]]).await.unwrap();
        assert_eq!(stopped, want[..j], "stopped at {}", want[j]);
        // Only a greedy step's pick can be the next step's token on the GPU.
        let sampled = gm.submit_step(&ctx, StepInput::Tokens(&prompt), 0, None, Pick::TopK(4)).await.unwrap();
        let refused = gm.submit_step(&ctx, StepInput::Previous(&sampled), prompt.len(), None, Pick::Argmax).await;
        assert!(refused.is_err_and(|e| e.to_string().contains("greedy step")));
        gm.finish_step(&ctx, sampled).await.unwrap();
    }
}

/// `loratab train` with no --model trains the embedded default; the adapter names it as its base.
#[cfg(not(target_arch = "wasm32"))]
#[test]
fn cli_trains_the_default_model_without_model_flag() {
    let out = std::env::temp_dir().join(format!("loratab-default-{}", std::process::id()));
    let text = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/default-model/heldout.txt");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_loratab"))
        .args(["train", "--text", text, "--out", out.to_str().unwrap(), "--steps", "2", "--batch", "1", "--seq-len", "32"])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], "models/austen-5m");
    assert_eq!(config["target_modules"], serde_json::json!(["q_proj", "v_proj"]));
    let eval = std::process::Command::new(env!("CARGO_BIN_EXE_loratab"))
        .args(["eval", "--text", text, "--seq-len", "128"])
        .output()
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert!((line["loss"].as_f64().unwrap() - golden()["loss"].as_f64().unwrap()).abs() <= 1e-4);
    std::fs::remove_dir_all(&out).ok();
}
