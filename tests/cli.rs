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
