//! Model loading, the CPU reference forward and the GPU forward against golden logits and losses
//! from transformers (tools/golden_forward.py wrote tests/fixtures/<model>/). Fixtures are compiled
//! in, so the same tests run natively and in headless Chromium.

mod common;
use common::{gpu, max_abs_diff, max_rel_error};

use loratab::model::{load_safetensors, Arch, GpuModel, Model, ModelFiles, Pick, Picked, Tokenizer};
use loratab::reference;

macro_rules! fixture {
    ($name:literal) => {
        Fixture {
            name: $name,
            config: include_str!(concat!("fixtures/", $name, "/config.json")),
            weights: include_bytes!(concat!("fixtures/", $name, "/model.safetensors")),
            tokenizer: include_bytes!(concat!("fixtures/", $name, "/tokenizer.json")),
            golden: include_bytes!(concat!("fixtures/", $name, "/golden.safetensors")),
            golden_json: include_str!(concat!("fixtures/", $name, "/golden.json")),
        }
    };
}

pub struct Fixture {
    name: &'static str,
    config: &'static str,
    weights: &'static [u8],
    tokenizer: &'static [u8],
    golden: &'static [u8],
    golden_json: &'static str,
}

const EVAL_TEXT: &str = include_str!("fixtures/eval.txt");

fn fixtures() -> [Fixture; 4] {
    [fixture!("gpt2-tiny"), fixture!("llama-tiny"), fixture!("llama-tiny-tied-bf16"), fixture!("qwen2-tiny")]
}

impl Fixture {
    fn files(&self) -> ModelFiles {
        ModelFiles {
            config: self.config.to_string(),
            weights: vec![("model.safetensors".into(), self.weights.to_vec())],
            tokenizer: self.tokenizer.to_vec(),
            ..Default::default()
        }
    }
    fn load(&self) -> (Model, Tokenizer) {
        Model::from_files(&self.files()).unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
    fn golden(&self, key: &str) -> Vec<f32> {
        load_safetensors("golden.safetensors", self.golden).unwrap()[key].data.clone()
    }
    fn ids(&self, key: &str) -> Vec<u32> {
        self.golden(key).iter().map(|&x| x as u32).collect()
    }
    fn json(&self, key: &str) -> f64 {
        let v: serde_json::Value = serde_json::from_str(self.golden_json).unwrap();
        v[key].as_f64().unwrap_or_else(|| panic!("{key} in golden.json"))
    }
}

gpu_test! {
    /// The CPU reference (the oracle for the GPU) agrees with transformers.
    async fn reference_forward_matches_transformers() {
        for f in fixtures() {
            let (model, _) = f.load();
            let tokens = f.ids("tokens");
            let e = max_rel_error(&reference::model::forward(&model, &tokens), &f.golden("logits"), f.name);
            assert!(e < 1e-4, "{}: max logit error {e}", f.name);
            let loss = reference::model::loss(&model, &tokens);
            assert!((loss - f.golden("loss")[0]).abs() < 1e-4, "{}: loss {loss}", f.name);
        }
    }
}

gpu_test! {
    async fn gpu_logits_match_transformers() {
        let ctx = gpu().await;
        for f in fixtures() {
            let (model, _) = f.load();
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            let tokens = f.ids("tokens");
            let logits = ctx.read(&gm.forward(&ctx, &tokens, 0).await.unwrap()).await.unwrap();
            let want = f.golden("logits");
            assert_eq!(want.len(), tokens.len() * model.config.vocab_size, "{}: golden logits", f.name);
            let worst = max_abs_diff(&logits, &want, f.name);
            assert!(worst < 1e-4, "{}: max |logit − transformers| = {worst}", f.name);
        }
    }
}

gpu_test! {
    /// `eval`'s chunked loss equals transformers' on the same text and chunking (seq 8 and 64).
    async fn gpu_eval_matches_transformers() {
        let ctx = gpu().await;
        for f in fixtures() {
            let (model, tokenizer) = f.load();
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            let tokens = tokenizer.encode(EVAL_TEXT).unwrap();
            for (seq, loss_key, count_key) in [(8, "eval_loss", "eval_tokens"), (64, "eval_loss_64", "eval_tokens_64")] {
                let r = loratab::eval::eval(&ctx, &gm, &tokens, seq).await.unwrap();
                assert_eq!(r.tokens as f64, f.json(count_key), "{} seq {seq}", f.name);
                assert!((r.loss - f.json(loss_key)).abs() < 1e-4, "{} seq {seq}: {} vs {}", f.name, r.loss, f.json(loss_key));
            }
        }
    }
}

gpu_test! {
    /// Greedy decoding with the KV cache reproduces transformers' greedy `generate`.
    async fn greedy_generation_matches_transformers() {
        let ctx = gpu().await;
        for f in fixtures() {
            let (model, _) = f.load();
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            let sampling = loratab::generate::Sampling { temperature: 0.0, top_k: 0, seed: 0 };
            let want = f.ids("greedy");
            assert!(!want.is_empty(), "{}: golden greedy tokens", f.name);
            let got = loratab::generate::generate(&ctx, &gm, &f.ids("prompt"), want.len(), &sampling, None).await.unwrap();
            assert_eq!(got, want, "{}", f.name);
        }
    }
}

gpu_test! {
    /// Generation ends at the first of the model's stop ids and leaves it out. The unstopped run
    /// (transformers' greedy tokens; and a top-k sampled one) is cut just before the first
    /// occurrence of each of its tokens made a stop id (listed with ids that never occur, first or
    /// not); with several occurring, the earliest ends it; the model's own stop id (config.json's
    /// EOS, 0) never occurs, and generation is unchanged.
    async fn generation_stops_at_each_stop_id() {
        use loratab::generate::{generate, generate_until, Sampling};
        let ctx = gpu().await;
        let f = fixture!("llama-tiny");
        let (model, _) = f.load();
        assert_eq!(model.config.stop_ids, [0]);
        let mut gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let prompt = f.ids("prompt");
        for (temperature, top_k) in [(0.0, 0), (0.9, 8)] {
            let s = Sampling { temperature, top_k, seed: 5 };
            let free = generate_until(&ctx, &gm, &prompt, 12, &s, None, &[]).await.unwrap();
            assert_eq!(free.len(), 12);
            if temperature == 0.0 {
                assert_eq!(free, f.ids("greedy"), "the unstopped run is transformers'");
            }
            assert!(!free.contains(&0));
            gm.config.stop_ids = vec![0];
            assert_eq!(generate(&ctx, &gm, &prompt, 12, &s, None).await.unwrap(), free, "no stop id occurs");
            let absent: Vec<u32> = (1..300).filter(|t| !free.contains(t)).take(2).collect();
            let mut distinct: Vec<u32> = free.clone();
            distinct.dedup();
            distinct.sort();
            distinct.dedup();
            assert!(distinct.len() >= 3, "{free:?}");
            for &t in &distinct {
                let first = free.iter().position(|&x| x == t).unwrap();
                for stops in [vec![t, absent[0]], vec![absent[0], absent[1], t]] {
                    gm.config.stop_ids = stops.clone();
                    let got = generate(&ctx, &gm, &prompt, 12, &s, None).await.unwrap();
                    assert_eq!(got, free[..first], "temperature {temperature}, stop ids {stops:?}");
                }
            }
            gm.config.stop_ids = distinct.iter().rev().copied().collect();
            assert!(generate(&ctx, &gm, &prompt, 12, &s, None).await.unwrap().is_empty(), "the first token is a stop id");
            gm.config.stop_ids = distinct.iter().copied().filter(|&t| t != free[0]).collect();
            let second = free.iter().position(|&x| x != free[0]).unwrap();
            assert_eq!(generate(&ctx, &gm, &prompt, 12, &s, None).await.unwrap(), free[..second], "the earliest stop ends it");
        }
    }
}

gpu_test! {
    /// The cache path (prompt, then one token at a time) gives the same logits as one full pass.
    async fn kv_cache_matches_full_forward() {
        let ctx = gpu().await;
        let f = fixture!("llama-tiny");
        let (model, _) = f.load();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let tokens = f.ids("tokens");
        let full = ctx.read(&gm.forward(&ctx, &tokens, 0).await.unwrap()).await.unwrap();
        let v = model.config.vocab_size;
        assert_eq!(full.len(), tokens.len() * v, "one row of logits per token");
        assert!(tokens.len() > 10, "some tokens go through the cache one at a time");
        gm.forward(&ctx, &tokens[..10], 0).await.unwrap();
        for (i, &tok) in tokens.iter().enumerate().skip(10) {
            let step = ctx.read(&gm.forward(&ctx, &[tok], i).await.unwrap()).await.unwrap();
            let e = max_rel_error(&step, &full[i * v..(i + 1) * v], &format!("position {i}"));
            assert!(e < 1e-4, "position {i}: {e}");
        }
    }
}

gpu_test! {
    /// Weights over the per-binding cap are split by rows (GPT-2's 147 MiB embedding vs 128 MiB):
    /// with a tiny cap the embeddings and LM heads come in several parts and the logits still match.
    async fn split_weights_give_the_same_logits() {
        let ctx = gpu().await;
        ctx.set_max_binding(24 * 1024);
        for f in [fixture!("gpt2-tiny"), fixture!("llama-tiny")] {
            let (model, _) = f.load();
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            assert!(gm.token_embedding.parts.len() >= 2, "{}: {} parts", f.name, gm.token_embedding.parts.len());
            if let Some(head) = &gm.lm_head {
                assert!(head.weight.parts.len() >= 3, "{} lm_head parts", head.weight.parts.len());
            }
            // The full [23, 300] logits exceed the cap: check each row block.
            let tokens = f.ids("tokens");
            let h = gm.hidden(&ctx, &tokens, 0).await.unwrap();
            let want = f.golden("logits");
            let v = model.config.vocab_size;
            assert_eq!(want.len(), tokens.len() * v, "{}: golden logits", f.name);
            for row0 in (0..tokens.len()).step_by(10) {
                let rows = 10.min(tokens.len() - row0);
                let logits = ctx.read(&gm.logits(&ctx, &h, row0, rows).await.unwrap()).await.unwrap();
                let worst = max_abs_diff(&logits, &want[row0 * v..(row0 + rows) * v], &format!("{} rows {row0}..", f.name));
                assert!(worst < 1e-4, "{} rows {row0}..: {worst}", f.name);
            }
            // The last token as generation runs it, a one-row decode step after the rest: on a CPU
            // device each part of the head takes the final norm (one dispatch fewer than the full
            // pass's final norm and head parts).
            let last = tokens.len() - 1;
            gm.hidden(&ctx, &tokens[..last], 0).await.unwrap();
            let before = ctx.dispatches_submitted();
            gm.forward(&ctx, &tokens[last..], last).await.unwrap();
            let full = ctx.dispatches_submitted() - before;
            let before = ctx.dispatches_submitted();
            let Picked::Logits(logits) = gm.decode_step(&ctx, &tokens[last..], last, None, Pick::Logits).await.unwrap() else { panic!("Pick::Logits gives logits") };
            let decoded = ctx.dispatches_submitted() - before;
            let worst = max_abs_diff(&logits, &want[last * v..], &format!("{} decode step", f.name));
            assert!(worst < 1e-4, "{} decode step at {last}: {worst}", f.name);
            if ctx.is_cpu() && model.config.arch == Arch::Llama {
                assert_eq!(decoded + 1, full, "{}: the decode step's head parts take the final norm", f.name);
            }
        }
    }
}

gpu_test! {
    /// A Conv1D weight that cannot be split is refused with a sentence, not a GPU crash.
    async fn too_large_conv1d_is_refused() {
        let ctx = gpu().await;
        ctx.set_max_binding(2 * 1024);
        let (model, _) = fixture!("gpt2-tiny").load();
        let err = GpuModel::upload(&ctx, &model).await.map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("more than this GPU allows"), "{err}");
    }
}

gpu_test! {
    /// With a cap below [tokens, vocab] floats, eval scores the logits a block of rows at a time.
    async fn eval_in_row_blocks_matches_transformers() {
        let ctx = gpu().await;
        ctx.set_max_binding(64 * 1024); // 54 of the 63 rows of 300 logits per block
        let f = fixture!("gpt2-tiny");
        let (model, tokenizer) = f.load();
        let gm = GpuModel::upload(&ctx, &model).await.unwrap();
        let tokens = tokenizer.encode(EVAL_TEXT).unwrap();
        let r = loratab::eval::eval(&ctx, &gm, &tokens, 64).await.unwrap();
        assert!((r.loss - f.json("eval_loss_64")).abs() < 1e-4, "{} vs {}", r.loss, f.json("eval_loss_64"));
    }
}

gpu_test! {
    /// Generation chooses its tokens on the GPU (the argmax, or the top k ranked for a draw on the
    /// CPU, or the whole row past 64): the same tokens as `generate::sample` on each step's full row
    /// of logits read back (how they were chosen before), for greedy, top-k and untruncated sampling.
    async fn gpu_token_choice_matches_cpu_sampling() {
        use loratab::generate::{generate, sample, Sampling};
        let ctx = gpu().await;
        for f in [fixture!("llama-tiny"), fixture!("gpt2-tiny")] {
            let (model, _) = f.load();
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            let (prompt, v, n) = (f.ids("prompt"), model.config.vocab_size, 12);
            for (temperature, top_k) in [(0.0, 0), (0.8, 5), (1.5, 40), (1.0, 0), (1.0, 100)] {
                let s = Sampling { temperature, top_k, seed: 7 };
                let got = generate(&ctx, &gm, &prompt, n, &s, None).await.unwrap();
                let mut rng = loratab::rng::Rng::new(s.seed);
                let (mut want, mut input, mut past) = (Vec::new(), prompt.clone(), 0);
                while want.len() < n {
                    let h = gm.hidden(&ctx, &input, past).await.unwrap();
                    let logits = ctx.read(&gm.logits(&ctx, &h, input.len() - 1, 1).await.unwrap()).await.unwrap();
                    assert_eq!(logits.len(), v, "one row of logits");
                    let token = sample(&logits, &s, &mut rng);
                    want.push(token);
                    past += input.len();
                    input = vec![token];
                }
                assert_eq!(got, want, "{} temperature {temperature} top_k {top_k}", f.name);
            }
        }
    }
}
