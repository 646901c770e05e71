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
