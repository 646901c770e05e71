//! The native CLI end to end: `loratab eval` prints transformers' loss for the fixture text, and
//! errors come out as one sentence with a failing exit code.

// Native only: these read files and run the CLI binary.
#![cfg(not(target_arch = "wasm32"))]

use std::path::Path;
use std::process::Command;

fn loratab(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loratab"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn golden(model: &str, key: &str) -> f64 {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(model).join("golden.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[key].as_f64().unwrap()
}

#[test]
fn eval_prints_transformers_loss() {
    for model in ["gpt2-tiny", "llama-tiny"] {
        let dir = format!("tests/fixtures/{model}");
        // Default chunk length = the model's context (64 here).
        let (ok, out, err) = loratab(&["eval", "--model", &dir, "--text", "tests/fixtures/eval.txt"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!((v["loss"].as_f64().unwrap() - golden(model, "eval_loss_64")).abs() < 1e-4, "{model}: {out}");
        assert_eq!(v["tokens"].as_f64().unwrap(), golden(model, "eval_tokens_64"));
        assert!((v["ppl"].as_f64().unwrap() - v["loss"].as_f64().unwrap().exp()).abs() < 1e-6);

        let (ok, out, err) =
            loratab(&["eval", "--model", &dir, "--text", "tests/fixtures/eval.txt", "--seq-len", "8"]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert!((v["loss"].as_f64().unwrap() - golden(model, "eval_loss")).abs() < 1e-4, "{model}: {out}");
    }
}

#[test]
fn generate_is_deterministic_for_a_seed() {
    let args = ["generate", "--model", "tests/fixtures/llama-tiny", "--prompt", "The quick", "--max-tokens", "8", "--seed", "3"];
    let (ok1, out1, err) = loratab(&args);
    assert!(ok1, "{err}");
    let (_, out2, _) = loratab(&args);
    assert_eq!(out1, out2);
    assert!(out1.starts_with("The quick"), "{out1}");
}

#[test]
fn errors_are_sentences() {
    let (ok, _, err) = loratab(&["eval", "--model", "tests/fixtures/nope", "--text", "tests/fixtures/eval.txt"]);
    assert!(!ok);
    assert!(err.starts_with("error: ") && err.contains("config.json is missing"), "{err}");
    let (ok, _, err) = loratab(&["eval", "--model", "tests/fixtures/gpt2-tiny", "--text", "tests/fixtures/none.txt"]);
    assert!(!ok);
    assert!(err.contains("could not read tests/fixtures/none.txt"), "{err}");
    let (ok, _, err) =
        loratab(&["eval", "--model", "tests/fixtures/gpt2-tiny", "--text", "tests/fixtures/eval.txt", "--seq-len", "1000"]);
    assert!(!ok);
    assert!(err.contains("outside 2..=64"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn import_gguf_writes_a_folder_eval_scores_like_transformers() {
    let out = std::env::temp_dir().join(format!("loratab-import-gguf-{}", std::process::id()));
    let out_str = out.to_str().unwrap();
    let (ok, stdout, err) = loratab(&["import-gguf", "tests/fixtures/gguf/tiny.gguf", "--out", out_str]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("imported loratab tiny llama: 0.1M parameters, 2 layers, vocabulary 400"), "{stdout}");
    assert!(stdout.contains("4 Q4_0, 4 Q4_1, 4 Q8_0"), "{stdout}");
    let (ok, stdout, err) = loratab(&["eval", "--model", out_str, "--text", "tests/fixtures/eval.txt", "--seq-len", "512"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let loss = golden("gguf", "loss");
    assert!((v["loss"].as_f64().unwrap() - loss).abs() < 1e-4, "{stdout} vs transformers {loss}");
    std::fs::remove_dir_all(&out).unwrap();

    let (ok, _, err) = loratab(&["import-gguf", "tests/fixtures/eval.txt", "--out", out_str]);
    assert!(!ok);
    assert_eq!(err.trim(), "error: tests/fixtures/eval.txt: not a GGUF file: it starts with \"Ever\" instead of \"GGUF\"");
    assert!(!out.exists());
}

mod common;

const TINY_GGUF: &str = "tests/fixtures/gguf/tiny.gguf";

/// A scratch folder for one test, removed first if a previous run left it.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("loratab-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn eval_reads_a_gguf_directly_and_keeps_it_compact() {
    let eval = |extra: &[&str]| {
        let args = [&["eval", "--model", TINY_GGUF, "--text", "tests/fixtures/eval.txt", "--seq-len", "512"], extra].concat();
        let (ok, out, err) = loratab(&args);
        assert!(ok, "{err}");
        json(&out)
    };
    let want = golden("gguf", "loss");
    let compact = eval(&[]);
    assert!((compact["loss"].as_f64().unwrap() - want).abs() < 1e-4, "{compact} vs transformers {want}");
    // Every matrix stays in the file's type: the counts of the file's 2-D tensors by type.
    let mut stored = std::collections::BTreeMap::new();
    for t in loratab::gguf::Gguf::parse(&std::fs::read(TINY_GGUF).unwrap()).unwrap().tensors.iter().filter(|t| t.dims.len() == 2) {
        *stored.entry(t.kind.name.to_lowercase()).or_insert(0) += 1;
    }
    let shown: std::collections::BTreeMap<String, i32> = compact["weights"]["formats"]
        .as_str()
        .unwrap()
        .split(", ")
        .map(|f| f.split_once(" ×").map(|(k, n)| (k.to_string(), n.parse().unwrap())).unwrap())
        .collect();
    assert_eq!(shown, stored);
    // Widened to f32 the values (and so the loss) are the same; the GPU holds more bytes.
    let wide = eval(&["--base-dtype", "f32"]);
    assert!((wide["loss"].as_f64().unwrap() - want).abs() < 1e-4, "{wide}");
    assert_eq!(wide["weights"]["formats"], "f32 ×16");
    let (small, big) = (compact["weights"]["gpu_bytes"].as_u64().unwrap(), wide["weights"]["gpu_bytes"].as_u64().unwrap());
    assert!(small * 3 < big, "compact {small} bytes vs f32 {big}");

    // generate reads the GGUF the same way: greedy decoding is the same text twice.
    let args = ["generate", "--model", TINY_GGUF, "--prompt", "The quick", "--max-tokens", "6", "--temperature", "0"];
    let (ok, first, err) = loratab(&args);
    assert!(ok && first.starts_with("The quick"), "{err}{first}");
    assert_eq!(loratab(&args).1, first);
}

#[test]
fn train_on_a_gguf_then_eval_and_merge() {
    let dir = scratch("gguf-train");
    let adapter = dir.join("adapter");
    let merged = dir.join("merged");
    let (adapter_s, merged_s) = (adapter.to_str().unwrap(), merged.to_str().unwrap());
    // --keep last: the trained adapter, not the untrained one should step 2 validate worse than step 0.
    let train = ["train", "--model", TINY_GGUF, "--text", "tests/fixtures/eval.txt", "--out", adapter_s, "--steps", "2", "--rank", "2", "--keep", "last"];
    let tiny = ["--batch", "1", "--seq-len", "16", "--eval-every", "0", "--log-every", "1", "--lr", "0.05", "--targets", "q,v,down"];
    let (ok, out, err) = loratab(&[&train[..], &tiny].concat());
    assert!(ok, "{err}");
    assert_eq!(json(&out)["steps"], 2);
    assert!(err.contains("frozen weights: ") && err.contains("q8_0 ×4"), "{err}");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["base_model_name_or_path"], "tiny.gguf");
    // Every adapter says what it was trained on, a text too.
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(adapter.join("training_data.json")).unwrap()).unwrap();
    assert_eq!(record, serde_json::json!({"data": "text", "max_length": 16}));

    // The adapter on the GGUF scores as the merged f32 folder does.
    let text = ["--text", "tests/fixtures/eval.txt", "--seq-len", "64"];
    let (ok, out, err) = loratab(&[&["eval", "--model", TINY_GGUF, "--adapter", adapter_s][..], &text].concat());
    assert!(ok, "{err}");
    let with_adapter = json(&out)["loss"].as_f64().unwrap();
    let (ok, _, err) = loratab(&["merge", "--model", TINY_GGUF, "--adapter", adapter_s, "--out", merged_s]);
    assert!(ok, "{err}");
    for file in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"] {
        assert!(merged.join(file).is_file(), "{file} missing from the merged folder");
    }
    let (ok, out, err) = loratab(&[&["eval", "--model", merged_s][..], &text].concat());
    assert!(ok, "{err}");
    let merged_loss = json(&out)["loss"].as_f64().unwrap();
    assert!((merged_loss - with_adapter).abs() < 1e-5, "merged {merged_loss} vs adapter {with_adapter}");
    // ... and the adapter changed something, so that equality means something.
    let (ok, out, err) = loratab(&[&["eval", "--model", TINY_GGUF][..], &text].concat());
    assert!(ok, "{err}");
    let base = json(&out)["loss"].as_f64().unwrap();
    assert!((base - with_adapter).abs() > 1e-3, "base {base} vs adapter {with_adapter}");

    // --base-dtype requantizes the GGUF's matrices for training; the budget is still the measurement.
    let requantized = dir.join("q8");
    let train = ["train", "--model", TINY_GGUF, "--text", "tests/fixtures/eval.txt", "--out", requantized.to_str().unwrap(), "--steps", "1"];
    let (ok, out, err) = loratab(&[&train[..], &tiny, &["--base-dtype", "q8_0"]].concat());
    assert!(ok, "{err}");
    assert!(err.contains("(q8_0 ×16)"), "{err}");
    let memory = &json(&out)["gpu_memory"];
    assert_eq!(memory["budget"], memory["measured"], "{memory}");
    assert_eq!(memory["weight_formats"], "q8_0 ×16");

    // Merging over the base itself is refused before anything is written.
    let (ok, _, err) = loratab(&["merge", "--model", TINY_GGUF, "--adapter", adapter_s, "--out", TINY_GGUF]);
    assert!(!ok);
    assert!(err.contains("is the base model itself"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_gguf_files_and_formats_are_sentences() {
    use loratab::gguf::{Kind, Value};
    let dir = scratch("gguf-bad");
    let tiny = std::fs::read(TINY_GGUF).unwrap();
    let (meta, tensors) = common::gguf_parts(&tiny);
    let zeros = |dims: &[u64], code: u32| {
        let k = Kind::from_code(code).unwrap();
        vec![0u8; (dims.iter().product::<u64>() / k.block * k.bytes) as usize]
    };

    // A Q4_K tensor (a valid file: a feed-forward width of 256 makes whole 256-value blocks).
    let mut q4k_meta = meta.clone();
    q4k_meta.insert("llama.feed_forward_length".into(), Value::U32(256));
    let mut q4k = tensors.clone();
    for t in q4k.iter_mut().filter(|t| t.0.contains(".ffn_") && t.1.len() == 2) {
        t.1 = if t.0.contains("ffn_down") { vec![256, 64] } else { vec![64, 256] };
        if t.0 == "blk.0.ffn_down.weight" {
            t.2 = 12;
        }
        t.3 = zeros(&t.1, t.2);
    }
    // Rows of 48 values in a Q8_0 tensor: not whole blocks of 32.
    let mut ragged = tensors.clone();
    ragged[0].1[0] = 48;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("q4k", common::write_gguf(&q4k_meta, &q4k), "tensor `blk.0.ffn_down.weight` is stored as Q4_K; loratab imports F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors"),
        ("truncated", tiny[..tiny.len() - 100].to_vec(), "tensor `output.weight` lies outside the data section"),
        ("ragged", common::write_gguf(&meta, &ragged), "its rows of 48 values do not fill whole Q8_0 blocks of 32"),
        ("text", b"just some text".to_vec(), "not a GGUF file"),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(format!("{name}.gguf"));
        std::fs::write(&path, bytes).unwrap();
        let path = path.to_str().unwrap();
        for command in ["eval", "train"] {
            let mut args = vec![command, "--model", path, "--text", "tests/fixtures/eval.txt"];
            if command == "train" {
                args.extend(["--out", dir.to_str().unwrap()]);
            }
            let (ok, _, err) = loratab(&args);
            assert!(!ok, "{name} {command}");
            assert!(err.starts_with(&format!("error: {path}: ")) && err.contains(want), "{name} {command}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let missing = dir.join("missing.gguf");
    let (ok, _, err) = loratab(&["eval", "--model", missing.to_str().unwrap(), "--text", "tests/fixtures/eval.txt"]);
    assert!(!ok && err.contains("could not read") && err.contains("missing.gguf"), "{err}");

    // --base-dtype: an unknown name, and a model whose rows are not whole blocks (llama-tiny's 48).
    let (ok, _, err) = loratab(&["eval", "--model", TINY_GGUF, "--text", "tests/fixtures/eval.txt", "--base-dtype", "q5_k"]);
    assert!(!ok && err.contains("`q5_k` is not a weight format: choose one of f32, f16, bf16, q8_0, q4_0, q4_1"), "{err}");
    let (ok, _, err) = loratab(&["eval", "--model", "tests/fixtures/llama-tiny", "--text", "tests/fixtures/eval.txt", "--base-dtype", "q4_0"]);
    assert!(!ok && err.starts_with("error: tensor `") && err.contains("not a multiple of q4_0's block of 32"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `train --data` on examples: lines that are broken JSON, name an unknown role, have an empty
/// answer, or hold a conversation the model's chat template refuses are each a sentence with their
/// line number, and the rest trains; the examples cut to --seq-len are counted. `--out` gets the
/// adapter of the lowest validation loss and `--out`/last the last one (`--keep last`: the other way
/// round), each with `training_data.json` saying which template and masking made the data (an older
/// version's `sft_config.json` left in the folder is removed). A file with
/// nothing trainable left is the only failure.
#[test]
fn train_on_examples_reports_bad_lines_and_keeps_the_best() {
    let dir = scratch("sft");
    // llama-tiny with a chat template that refuses system messages, as Mistral's does.
    let model = dir.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json", "generation_config.json"] {
        std::fs::copy(format!("tests/fixtures/llama-tiny/{f}"), model.join(f)).unwrap();
    }
    let template = "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not supported') }}{% endif %}\
                    {{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    let config = serde_json::json!({ "chat_template": template, "eos_token": "<|endoftext|>" });
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    let turn = |q: &str, a: &str| serde_json::json!({ "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}] }).to_string();
    let mut lines: Vec<String> = (0..10).map(|i| turn(&format!("What is {i} plus {i}?"), &format!("It is {}.", 2 * i))).collect();
    lines.insert(2, r#"{"messages": [{"role": "user", "content": "Hi"}"#.into());
    lines.insert(4, r#"{"messages": [{"role": "bot", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#.into());
    lines.insert(6, turn("Hi", " "));
    lines.insert(8, r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#.into());
    let data = dir.join("chat.jsonl");
    std::fs::write(&data, lines.join("\n")).unwrap();
    let (model_s, data_s) = (model.to_str().unwrap(), data.to_str().unwrap());
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("sft_config.json"), "{}").unwrap();
    let train = ["train", "--model", model_s, "--data", data_s, "--steps", "4", "--eval-every", "2", "--seq-len", "36", "--lr", "1e-2"];
    let (ok, stdout, err) = loratab(&[&train[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    for sentence in [
        "line 3 is not valid JSON",
        "line 5: message 1 has role \"bot\"; the roles are \"system\", \"user\" and \"assistant\"; skipped",
        "line 7: assistant message 2 is empty; skipped",
        "line 9: the chat template refused the conversation: System messages are not supported; skipped",
        "with the model's template, loss on the answers only",
        "4 lines skipped",
    ] {
        assert!(err.contains(sentence), "{sentence:?} in {err}");
    }
    let v = json(&stdout);
    let ex = &v["examples"];
    assert_eq!(ex["train"].as_u64().unwrap() + ex["validation"].as_u64().unwrap() + ex["dropped"].as_u64().unwrap(), 10, "{v}");
    // "user: What is 9 plus 9?\nassistant: It is 18.\n" is 39 tokens of llama-tiny's: cut to 36.
    assert!(ex["truncated"].as_u64().unwrap() >= 1, "{v}");
    let (best, last) = (v["best_step"].as_u64().unwrap(), v["steps"].as_u64().unwrap());
    assert_eq!(last, 4);
    assert!(err.contains(&format!("best adapter (step {best}, validation loss")) && err.contains("last adapter (step 4, validation loss"), "{err}");
    for (folder, step) in [(out.clone(), best), (out.join("last"), last)] {
        let state = std::fs::read(folder.join("training_state.safetensors")).unwrap();
        assert_eq!(loratab::train::TrainingState::from_bytes(&state).unwrap().step as u64, step, "{}", folder.display());
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(folder.join("training_data.json")).unwrap()).unwrap();
        assert_eq!(
            (record["data"].as_str(), record["format"].as_str(), record["template"].as_str(), record["completion_only_loss"].as_bool(), record["max_length"].as_u64()),
            (Some("examples"), Some("messages"), Some("model"), Some(true), Some(36))
        );
        assert_eq!(record["chat_template"], template);
    }
    assert!(!out.join("sft_config.json").exists(), "the old name's record of another run is left in --out");

    // The plain template, every token learnt, the last adapter in --out and the best beside it.
    let out2 = dir.join("out2");
    let extra = ["--out", out2.to_str().unwrap(), "--template", "plain", "--no-mask-prompt", "--keep", "last"];
    let (ok, stdout, err) = loratab(&[&train[..], &extra].concat());
    assert!(ok && err.contains("with the plain template, loss on every token"), "{err}");
    assert!(!err.contains("line 9"), "the plain template takes system messages: {err}");
    assert_eq!(json(&stdout)["best_out"], out2.join("best").to_str().unwrap());
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(out2.join("best/training_data.json")).unwrap()).unwrap();
    assert_eq!((record["template"].as_str(), record["completion_only_loss"].as_bool(), record["eos_token"].as_str()), (Some("plain"), Some(false), Some("<|endoftext|>")));

    // Nothing trainable: no good line at all, or one example only (nothing left to validate on).
    std::fs::write(&data, [lines[2].as_str(), lines[4].as_str()].join("\n")).unwrap();
    let (ok, _, err) = loratab(&[&train[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(!ok && err.contains("line 1 is not valid JSON") && err.contains("line 2: message 1 has role \"bot\"") && err.contains("has no usable example"), "{err}");
    std::fs::write(&data, [lines[0].as_str(), lines[6].as_str()].join("\n")).unwrap();
    let (ok, _, err) = loratab(&[&train[..], &["--out", out.to_str().unwrap()]].concat());
    assert!(!ok && err.contains("only 1 example can be trained on"), "{err}");
    let no_validation = ["train", "--model", model_s, "--data", data_s, "--eval-every", "0", "--early-stop", "2", "--out", out.to_str().unwrap()];
    let (ok, _, err) = loratab(&no_validation);
    assert!(!ok && err.contains("--early-stop counts validations"), "{err}");
}

/// `--max-memory`: a run whose estimate is above the limit is refused before it trains, with the
/// estimate, the limit and what to lower; a size that is not one is a sentence too.
#[test]
fn train_over_max_memory_is_refused() {
    let dir = scratch("max-memory");
    let out = dir.join("adapter");
    let out_s = out.to_str().unwrap();
    let base = ["train", "--model", "tests/fixtures/llama-tiny", "--text", "tests/fixtures/eval.txt", "--out", out_s, "--steps", "2", "--seq-len", "16"];
    let (ok, _, err) = loratab(&[&base[..], &["--max-memory", "512KiB"]].concat());
    assert!(!ok, "{err}");
    let wants = ["error: training needs ", "of GPU memory (frozen weights ", "more than the limit of 524.3 kB (--max-memory)", "lower --batch, --seq-len or --rank", "turn on --grad-checkpoint (it would need ", "--base-dtype"];
    for want in wants {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
    assert!(!err.contains("panicked") && !out.exists(), "{err}");
    let (ok, _, err) = loratab(&[&base[..], &["--max-memory", "lots"]].concat());
    assert!(!ok && err.contains("`lots` is not a size: write e.g. 4GiB, 512MB or a number of bytes"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A learning rate so large that AdamW's update overflows (clipping off, finite gradients) stops
/// the run with a sentence saying what to change, and what is saved is the last good adapter: a
/// one-step run resumed at lr 1e38 saves the step-1 adapter and training state byte for byte,
/// every value finite.
#[test]
fn train_refuses_an_update_that_overflows_and_saves_the_last_good_adapter() {
    let dir = scratch("overflow");
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    let (good_s, bad_s) = (good.to_str().unwrap(), bad.to_str().unwrap());
    let base = ["train", "--model", "tests/fixtures/llama-tiny", "--text", "tests/fixtures/eval.txt", "--seq-len", "16", "--max-grad-norm", "0", "--keep", "last"];
    let (ok, _, err) = loratab(&[&base[..], &["--steps", "1", "--out", good_s]].concat());
    assert!(ok, "{err}");
    let (ok, _, err) = loratab(&[&base[..], &["--steps", "3", "--lr", "1e38", "--resume", good_s, "--out", bad_s]].concat());
    assert!(!ok, "{err}");
    let wants = ["step 2 was not applied", "AdamW's update would have made the adapter or its optimizer state infinite or NaN", "lower the learning rate", "--max-grad-norm 1.0", "the adapter of step 1 was saved to"];
    for want in wants {
        assert!(err.contains(want), "`{want}` missing from: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    for file in ["adapter_model.safetensors", "training_state.safetensors"] {
        let saved = std::fs::read(bad.join(file)).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&saved).unwrap();
        let mut values = 0;
        for (name, t) in tensors.tensors() {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
            for v in t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())) {
                assert!(v.is_finite(), "{file}: {name} holds {v}");
                values += 1;
            }
        }
        assert!(values > 0, "{file} holds no values");
        assert!(saved == std::fs::read(good.join(file)).unwrap(), "{file} is not the step-1 one");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
