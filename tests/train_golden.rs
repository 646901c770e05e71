//! The GPU LoRA training step against PEFT (tools/golden_lora.py wrote tests/fixtures/lora/<case>/):
//! the loss of the golden batch, the gradient of every lora_A / lora_B, and a 3-step AdamW trajectory
//! (losses and final adapters). Fixtures are compiled in, so the same tests run natively and in
//! headless Chromium. The cases gguf-q (Q8_0/Q4_0/Q4_1/F16/BF16 GGUF), llama-bf16 and llama-f16 have
//! bases stored compact; PEFT's goldens for them are those of the dequantized (f32) model.

mod common;
use common::{gpu, max_abs_diff};

use loratab::gpu::adamw::AdamW;
use loratab::lora::Adapter;
use loratab::model::{load_safetensors, GpuMlp, GpuModel, HostTensor, Model, ModelFiles, RowParts, WeightFormat};
use loratab::reference::cross_entropy::IGNORE;
use loratab::train::{data::pad_batch, Example, GpuLora, Trainer};
use std::collections::{BTreeSet, HashMap};

/// A case's base model as stored on disk.
enum Base {
    /// A Hugging Face folder: config.json, one model.safetensors (f32, f16 or bf16), tokenizer.json.
    Folder { config: &'static str, weights: &'static [u8], tokenizer: &'static [u8] },
    /// A llama GGUF file.
    Gguf(&'static [u8]),
}

impl Base {
    /// The base as loratab loads it: a folder's files, or the GGUF directly (tensors kept in the
    /// file's formats, as `loratab train --model x.gguf` loads it).
    fn model(&self) -> Model {
        match *self {
            Base::Folder { config, weights, tokenizer } => {
                let files = ModelFiles {
                    config: config.to_string(),
                    weights: vec![("model.safetensors".into(), weights.to_vec())],
                    tokenizer: tokenizer.to_vec(),
                    ..Default::default()
                };
                Model::from_files(&files).unwrap().0
            }
            Base::Gguf(bytes) => loratab::gguf::import(bytes).unwrap().model().unwrap().0,
        }
    }

    /// The stored type of one tensor, named as transformers (`hf`) and llama.cpp (`gguf`) name it.
    fn stored_format(&self, hf: &str, gguf: &str) -> WeightFormat {
        let name = match *self {
            Base::Folder { weights, .. } => {
                format!("{:?}", safetensors::SafeTensors::deserialize(weights).unwrap().tensor(hf).unwrap().dtype())
            }
            Base::Gguf(bytes) => {
                let g = loratab::gguf::Gguf::parse(bytes).unwrap();
                g.tensors.iter().find(|t| t.name == gguf).unwrap().kind.name.to_string()
            }
        };
        WeightFormat::parse(&name).unwrap()
    }

    /// Assert that the GPU keeps every weight matrix in the format the file stores it in (BF16,
    /// F16, Q8_0, Q4_0, Q4_1, …), not widened to f32: every row block of every matrix.
    fn assert_kept_compact(&self, gm: &GpuModel, case: &str) {
        let check = |parts: &RowParts, hf: &str, gguf: &str| {
            let want = self.stored_format(hf, gguf);
            for (row0, part) in &parts.parts {
                assert_eq!(part.format, want, "{case}: {hf} rows from {row0} on the GPU");
            }
        };
        check(&gm.token_embedding, "model.embed_tokens.weight", "token_embd.weight");
        if let Some(head) = &gm.lm_head {
            check(&head.weight, "lm_head.weight", "output.weight");
        }
        for (i, b) in gm.blocks.iter().enumerate() {
            let GpuMlp::SwiGlu { gate, up, down } = &b.mlp else { panic!("{case}: the compact cases are llamas") };
            let linears = [
                (&b.q, "self_attn.q_proj", "attn_q"),
                (&b.k, "self_attn.k_proj", "attn_k"),
                (&b.v, "self_attn.v_proj", "attn_v"),
                (&b.o, "self_attn.o_proj", "attn_output"),
                (gate, "mlp.gate_proj", "ffn_gate"),
                (up, "mlp.up_proj", "ffn_up"),
                (down, "mlp.down_proj", "ffn_down"),
            ];
            for (l, hf, gguf) in linears {
                check(&l.weight, &format!("model.layers.{i}.{hf}.weight"), &format!("blk.{i}.{gguf}.weight"));
            }
        }
    }

    /// How the weight matrices of the transformer blocks are stored in the file ("F32", "F16", "BF16",
    /// "Q8_0", …): what the GPU must keep once weights stay compact.
    fn stored_formats(&self) -> BTreeSet<String> {
        match *self {
            Base::Folder { weights, .. } => safetensors::SafeTensors::deserialize(weights)
                .unwrap()
                .tensors()
                .into_iter()
                .filter(|(name, view)| name.contains(".layers.") && view.shape().len() == 2)
                .map(|(_, view)| format!("{:?}", view.dtype()))
                .collect(),
            Base::Gguf(bytes) => loratab::gguf::Gguf::parse(bytes)
                .unwrap()
                .tensors
                .iter()
                .filter(|t| t.name.starts_with("blk.") && t.dims.len() == 2)
                .map(|t| t.kind.name.to_string())
                .collect(),
        }
    }
}

struct Case {
    name: &'static str,
    base: Base,
    adapter_config: &'static str,
    adapter: &'static [u8],
    golden: &'static [u8],
}

macro_rules! case {
    ($name:literal, base: $base:expr) => {
        Case {
            name: $name,
            base: $base,
            adapter_config: include_str!(concat!("fixtures/lora/", $name, "/adapter/adapter_config.json")),
            adapter: include_bytes!(concat!("fixtures/lora/", $name, "/adapter/adapter_model.safetensors")),
            golden: include_bytes!(concat!("fixtures/lora/", $name, "/golden.safetensors")),
        }
    };
    ($name:literal, $base:literal) => {
        case!(
            $name,
            base: Base::Folder {
                config: include_str!(concat!("fixtures/", $base, "/config.json")),
                weights: include_bytes!(concat!("fixtures/", $base, "/model.safetensors")),
                tokenizer: include_bytes!(concat!("fixtures/", $base, "/tokenizer.json")),
            }
        )
    };
}

fn gpt2_cattn() -> Case {
    case!("gpt2-cattn", "gpt2-tiny")
}
fn llama_qv() -> Case {
    case!("llama-qv", "llama-tiny")
}
fn llama_all_rslora() -> Case {
    case!("llama-all-rslora", "llama-tiny")
}
fn qwen2_qv() -> Case {
    case!("qwen2-qv", "qwen2-tiny")
}
/// tests/fixtures/gguf/tiny.gguf (Q8_0, Q4_0, Q4_1, F16, BF16 and F32 tensors), all seven llama
/// projections adapted.
fn gguf_q() -> Case {
    case!("gguf-q", base: Base::Gguf(include_bytes!("fixtures/gguf/tiny.gguf")))
}
/// A llama with 32-multiple dimensions stored in bf16 (untied head), all seven projections adapted.
fn llama_bf16() -> Case {
    case!("llama-bf16", "lora/llama-bf16/base")
}
/// The same shapes stored in f16, with a tied head.
fn llama_f16() -> Case {
    case!("llama-f16", "lora/llama-f16/base")
}

const BATCH: usize = 2;
const SEQ: usize = 16;

fn opt() -> AdamW {
    AdamW { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
}

/// ‖got − want‖ / ‖want‖, over equal-length, non-empty vectors (a NaN makes it NaN, which fails
/// every `e <= tolerance`).
fn rel_error(got: &[f32], want: &[f32], what: &str) -> f64 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    assert!(!want.is_empty(), "{what}: nothing to compare");
    let diff: f64 = got.iter().zip(want).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|&b| (b as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

impl Case {
    fn golden(&self) -> HashMap<String, HostTensor> {
        load_safetensors("golden.safetensors", self.golden).unwrap()
    }

    fn scalar(&self, key: &str) -> f32 {
        self.golden()[key].data[0]
    }

    fn tokens(&self) -> Vec<u32> {
        let t = &self.golden()["tokens"];
        assert_eq!(t.shape, [BATCH, SEQ]);
        t.data.iter().map(|&x| x as u32).collect()
    }

    async fn trainer(&self, ctx: &loratab::gpu::GpuContext) -> (GpuModel, Trainer) {
        self.trainer_with_dropout(ctx, 0.0).await
    }

    async fn trainer_with_dropout(&self, ctx: &loratab::gpu::GpuContext, dropout: f32) -> (GpuModel, Trainer) {
        self.trainer_on(ctx, &self.base.model(), dropout).await
    }

    /// The case's adapter on `model` (the base, possibly in another format).
    async fn trainer_on(&self, ctx: &loratab::gpu::GpuContext, model: &Model, dropout: f32) -> (GpuModel, Trainer) {
        let mut adapter = Adapter::from_files(self.adapter_config, self.adapter).unwrap();
        adapter.config.lora_dropout = dropout;
        let gm = GpuModel::upload(ctx, model).await.unwrap();
        let lora = GpuLora::new(ctx, &gm, &adapter).await.unwrap();
        let trainer = Trainer::new(ctx, &gm, lora, BATCH, SEQ).await.unwrap();
        (gm, trainer)
    }

    /// (a) loss and (b) gradients of the golden batch.
    async fn check_gradients(&self) {
        let ctx = gpu().await;
        let (gm, trainer) = self.trainer(&ctx).await;
        // The bases stored compact (gguf-q, llama-bf16, llama-f16) must stay so on the GPU.
        if self.base.stored_formats().iter().any(|f| f != "F32") {
            self.base.assert_kept_compact(&gm, self.name);
        }
        self.compare_gradients(&ctx, &gm, trainer, &self.golden(), (&self.tokens(), None), "").await;
    }

    /// The same with the vocabulary split across buffers (as GPT-2's on a 128 MiB-per-binding GPU):
    /// the LM head's backward then sums over row blocks of the (tied or untied) head.
    async fn check_split_vocabulary(&self) {
        let ctx = gpu().await;
        ctx.set_max_binding(40_000);
        let (gm, trainer) = self.trainer(&ctx).await;
        let parts = gm.lm_head.as_ref().map_or(&gm.token_embedding, |h| &h.weight).parts.len();
        assert!(parts > 1, "{}: the head should be split, has {parts} part", self.name);
        self.compare_gradients(&ctx, &gm, trainer, &self.golden(), (&self.tokens(), None), " with a split vocabulary").await;
    }

    /// The same with PEFT's lora_dropout at the golden p, PEFT using loratab's mask
    /// (tools/golden_dropout.py); evaluation of the same batch stays dropout-free.
    async fn check_dropout(&self, golden: &[u8]) {
        let golden = load_safetensors("dropout.safetensors", golden).unwrap();
        let (p, seed) = (golden["p"].data[0], golden["seed"].data[0] as u32);
        let ctx = gpu().await;
        let (gm, mut trainer) = self.trainer_with_dropout(&ctx, p).await;
        trainer.dropout_seed = seed;
        let chunks: Vec<Vec<u32>> = self.tokens().chunks(SEQ).map(|c| c.to_vec()).collect();
        let refs: Vec<&[u32]> = chunks.iter().map(|c| c.as_slice()).collect();
        let (sum, count) = trainer.loss_sum(&ctx, &gm, &refs).await.unwrap();
        let plain = self.scalar("loss");
        assert!(((sum / count as f64) as f32 - plain).abs() < 1e-4, "{}: evaluation must not drop", self.name);
        self.compare_gradients(&ctx, &gm, trainer, &golden, (&self.tokens(), None), " with dropout").await;
    }

    /// The loss and LoRA gradients of `batch` (tokens, and labels unless they are the tokens) against PEFT's.
    async fn compare_gradients(
        &self,
        ctx: &loratab::gpu::GpuContext,
        gm: &GpuModel,
        mut trainer: Trainer,
        golden: &HashMap<String, HostTensor>,
        batch: (&[u32], Option<&[u32]>),
        what: &str,
    ) {
        trainer.accumulate_labeled(ctx, gm, batch.0, batch.1, false).await.unwrap();
        let loss = trainer.read_loss(ctx).await.unwrap();
        let want = golden["loss"].data[0];
        assert!((loss - want).abs() < 1e-4, "{}{what}: loss {loss} vs PEFT {want}", self.name);
        let grads = trainer.lora.read_grads(ctx).await.unwrap();
        let expected: Vec<&String> = golden.keys().filter(|k| k.starts_with("grad.")).collect();
        assert!(!expected.is_empty(), "{}: the golden file has gradients", self.name);
        assert_eq!(grads.len(), expected.len(), "{}: one gradient per PEFT tensor", self.name);
        let mut worst = 0.0f64;
        for (key, g) in &grads {
            let want = &golden[&format!("grad.{key}")];
            assert_eq!(g.shape, want.shape, "{} {key}", self.name);
            let e = rel_error(&g.data, &want.data, &format!("{}{what} {key}", self.name));
            worst = worst.max(e);
            assert!(e <= 1e-3, "{}{what} {key}: relative gradient error {e}", self.name);
        }
        println!(
            "{}{what}: loss {loss} (PEFT {want}, error {:.2e}), worst relative gradient error {worst:.2e}",
            self.name,
            (loss - want).abs()
        );
    }

    /// (c) three AdamW steps: the loss before each step and the adapters after the last.
    async fn check_adamw(&self) {
        let ctx = gpu().await;
        let (gm, mut trainer) = self.trainer(&ctx).await;
        let tokens = self.tokens();
        let mut worst_loss = 0.0f32;
        for step in 1..=3 {
            trainer.train_step(&ctx, &gm, &tokens, &opt(), 1.0).await.unwrap();
            let loss = trainer.read_loss(&ctx).await.unwrap();
            let want = self.scalar(&format!("step{step}.loss"));
            assert!((loss - want).abs() < 1e-4, "{}: step {step} loss {loss} vs PEFT {want}", self.name);
            worst_loss = worst_loss.max((loss - want).abs());
        }
        let golden = self.golden();
        let adapter = trainer.lora.to_adapter(&ctx).await.unwrap();
        let mut worst = 0.0f64;
        let mut n = 0;
        for (module, pair) in &adapter.modules {
            for (half, t) in [("lora_A", &pair.a), ("lora_B", &pair.b)] {
                let key = format!("final.base_model.model.{module}.{half}.weight");
                let want = &golden[&key];
                assert_eq!(t.shape, want.shape, "{} {key}", self.name);
                let e = rel_error(&t.data, &want.data, &format!("{} {key}", self.name));
                worst = worst.max(e);
                assert!(e <= 1e-3, "{} {key}: relative error {e}", self.name);
                n += 1;
            }
        }
        assert_eq!(n, golden.keys().filter(|k| k.starts_with("final.")).count(), "{}", self.name);
        println!(
            "{}: 3 AdamW steps match, worst step-loss error {worst_loss:.2e}, worst relative adapter error {worst:.2e}",
            self.name
        );
    }
}

gpu_test! {
    async fn llama_qv_loss_and_gradients() { llama_qv().check_gradients().await }
}
gpu_test! {
    async fn llama_all_rslora_loss_and_gradients() { llama_all_rslora().check_gradients().await }
}
gpu_test! {
    async fn qwen2_qv_loss_and_gradients() { qwen2_qv().check_gradients().await }
}
gpu_test! {
    async fn gpt2_cattn_loss_and_gradients() { gpt2_cattn().check_gradients().await }
}
gpu_test! {
    async fn gguf_q_loss_and_gradients() { gguf_q().check_gradients().await }
}
gpu_test! {
    async fn llama_bf16_loss_and_gradients() { llama_bf16().check_gradients().await }
}
gpu_test! {
    async fn llama_f16_loss_and_gradients() { llama_f16().check_gradients().await }
}

/// The compact cases' bases store what they are meant to test (the formats come from the files).
#[test]
fn compact_bases_are_stored_compact() {
    let formats = |case: Case| case.base.stored_formats().into_iter().collect::<Vec<_>>();
    assert_eq!(formats(gguf_q()), ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]);
    assert_eq!(formats(llama_bf16()), ["BF16"]);
    assert_eq!(formats(llama_f16()), ["F16"]);
    assert_eq!(formats(llama_qv()), ["F32"]);
}

gpu_test! {
    async fn llama_qv_split_vocabulary_gradients() { llama_qv().check_split_vocabulary().await }
}
gpu_test! {
    async fn gpt2_cattn_split_vocabulary_gradients() { gpt2_cattn().check_split_vocabulary().await }
}
gpu_test! {
    async fn llama_qv_dropout_gradients() {
        llama_qv().check_dropout(include_bytes!("fixtures/lora/llama-qv/dropout.safetensors")).await
    }
}
gpu_test! {
    async fn gpt2_cattn_dropout_gradients() {
        gpt2_cattn().check_dropout(include_bytes!("fixtures/lora/gpt2-cattn/dropout.safetensors")).await
    }
}
impl Case {
    /// Instruction tuning (tools/golden_sft.py): two examples of different lengths, right-padded,
    /// labels −100 on their prompts and the padding. loratab's padding of the examples gives PEFT's
    /// batch; the loss (mean over the learnt positions only), its evaluation and every LoRA
    /// gradient equal PEFT's.
    async fn check_sft(&self, golden: &[u8]) {
        let golden = load_safetensors("sft.safetensors", golden).unwrap();
        let ids_of = |key: &str| -> Vec<u32> { golden[key].data.iter().map(|&x| if x == -100.0 { IGNORE } else { x as u32 }).collect() };
        let (ids, labels) = (ids_of("tokens"), ids_of("labels"));
        assert_eq!((golden["tokens"].shape.as_slice(), golden["labels"].shape.as_slice()), ([BATCH, SEQ].as_slice(), [BATCH, SEQ].as_slice()));
        let lengths = ids_of("lengths");
        assert_eq!(lengths.len(), BATCH);
        let examples: Vec<Example> = lengths
            .iter()
            .enumerate()
            .map(|(b, &n)| {
                let row = b * SEQ..b * SEQ + n as usize;
                Example { ids: ids[row.clone()].to_vec(), labels: labels[row].to_vec() }
            })
            .collect();
        assert!(examples[0].ids.len() < SEQ && examples.iter().all(|e| e.targets() > 0), "{}: the golden batch is padded", self.name);
        let refs: Vec<&Example> = examples.iter().collect();
        assert_eq!(pad_batch(&refs, BATCH, SEQ), (ids.clone(), labels.clone()), "{}: padded as PEFT's batch", self.name);

        let ctx = gpu().await;
        let (gm, trainer) = self.trainer(&ctx).await;
        let scored: Vec<(&[u32], &[u32])> = examples.iter().map(|e| (e.ids.as_slice(), e.labels.as_slice())).collect();
        let (sum, count) = trainer.loss_sum_labeled(&ctx, &gm, &scored).await.unwrap();
        let want = golden["loss"].data[0];
        assert_eq!(count, examples.iter().map(Example::targets).sum::<usize>());
        assert!(((sum / count as f64) as f32 - want).abs() < 1e-4, "{}: evaluated {} vs PEFT {want}", self.name, sum / count as f64);
        self.compare_gradients(&ctx, &gm, trainer, &golden, (&ids, Some(&labels)), " with answer-only labels").await;
    }
}

gpu_test! {
    async fn llama_qv_answer_only_loss_and_gradients() {
        llama_qv().check_sft(include_bytes!("fixtures/lora/llama-qv/sft.safetensors")).await
    }
}
gpu_test! {
    async fn gpt2_cattn_answer_only_loss_and_gradients() {
        gpt2_cattn().check_sft(include_bytes!("fixtures/lora/gpt2-cattn/sft.safetensors")).await
    }
}

gpu_test! {
    async fn llama_qv_adamw_trajectory() { llama_qv().check_adamw().await }
}
gpu_test! {
    async fn llama_all_rslora_adamw_trajectory() { llama_all_rslora().check_adamw().await }
}
gpu_test! {
    async fn qwen2_qv_adamw_trajectory() { qwen2_qv().check_adamw().await }
}
gpu_test! {
    async fn gpt2_cattn_adamw_trajectory() { gpt2_cattn().check_adamw().await }
}
gpu_test! {
    async fn gguf_q_adamw_trajectory() { gguf_q().check_adamw().await }
}
gpu_test! {
    async fn llama_bf16_adamw_trajectory() { llama_bf16().check_adamw().await }
}
gpu_test! {
    async fn llama_f16_adamw_trajectory() { llama_f16().check_adamw().await }
}

gpu_test! {
    /// The adapter read back from the GPU is the one uploaded (same keys, shapes, values and scales;
    /// GPT-2's fused c_attn B reassembled from its three row blocks).
    async fn to_adapter_round_trips() {
        let ctx = gpu().await;
        for case in [gpt2_cattn(), llama_all_rslora()] {
            let (_, trainer) = case.trainer(&ctx).await;
            let original = Adapter::from_files(case.adapter_config, case.adapter).unwrap();
            let back = trainer.lora.to_adapter(&ctx).await.unwrap();
            assert_eq!(back.config, original.config);
            assert_eq!(back.modules.keys().collect::<Vec<_>>(), original.modules.keys().collect::<Vec<_>>());
            for (k, p) in &original.modules {
                let q = &back.modules[k];
                assert_eq!((&q.a, &q.b, q.scale), (&p.a, &p.b, p.scale), "{} {k}", case.name);
            }
        }
    }
}

impl Case {
    /// Merge on the GPU: the merged model's loss equals the unmerged adapter's (1e-5), its logits
    /// equal a CPU merge's, and unmerging restores the base logits. A base kept compact (qwen2-tiny's
    /// f16) is refused with a sentence and merged once widened to f32.
    async fn check_merge(&self) {
        let ctx = gpu().await;
        let mut base = self.base.model();
        if base.weight_formats().keys().any(|&f| f != WeightFormat::F32) {
            let (gm, trainer) = self.trainer(&ctx).await;
            let e = trainer.lora.merge_into(&ctx, &gm).await.unwrap_err();
            assert!(matches!(e, loratab::train::TrainError::CompactMerge { .. }), "{}: {e}", self.name);
            base.convert_weights(WeightFormat::F32).unwrap();
        }
        let (gm, mut trainer) = self.trainer_on(&ctx, &base, 0.0).await;
        let tokens = self.tokens();
        trainer.compute_gradients(&ctx, &gm, &tokens).await.unwrap();
        let unmerged = trainer.read_loss(&ctx).await.unwrap() as f64;
        let base_logits = ctx.read(&gm.forward(&ctx, &tokens[..SEQ], 0).await.unwrap()).await.unwrap();

        trainer.lora.merge_into(&ctx, &gm).await.unwrap();
        let (mut sum, mut n) = (0.0, 0);
        for seq in tokens.chunks(SEQ) {
            let (s, k) = gm.loss_sum(&ctx, seq).await.unwrap();
            sum += s;
            n += k;
        }
        let merged = sum / n as f64;
        assert!((merged - unmerged).abs() < 1e-5, "{}: merged {merged} vs unmerged {unmerged}", self.name);

        let mut cpu_merged = base;
        loratab::lora::merge(&mut cpu_merged, &Adapter::from_files(self.adapter_config, self.adapter).unwrap()).unwrap();
        let cpu_gm = GpuModel::upload(&ctx, &cpu_merged).await.unwrap();
        let want = ctx.read(&cpu_gm.forward(&ctx, &tokens[..SEQ], 0).await.unwrap()).await.unwrap();
        let got = ctx.read(&gm.forward(&ctx, &tokens[..SEQ], 0).await.unwrap()).await.unwrap();
        assert_eq!(want.len(), SEQ * gm.config.vocab_size, "{}: one row of logits per token", self.name);
        let worst = max_abs_diff(&got, &want, &format!("{}: GPU vs CPU merge logits", self.name));
        assert!(worst < 1e-5, "{}: GPU vs CPU merge logits differ by {worst}", self.name);

        trainer.lora.unmerge_from(&ctx, &gm).await.unwrap();
        let back = ctx.read(&gm.forward(&ctx, &tokens[..SEQ], 0).await.unwrap()).await.unwrap();
        let worst = max_abs_diff(&back, &base_logits, &format!("{}: unmerged vs base logits", self.name));
        assert!(worst < 1e-5, "{}: unmerged logits differ from the base by {worst}", self.name);
    }
}

gpu_test! {
    async fn gpu_merge_and_unmerge_match() {
        for case in [gpt2_cattn(), llama_qv(), llama_all_rslora(), qwen2_qv(), gguf_q(), llama_f16()] {
            case.check_merge().await;
        }
    }
}
