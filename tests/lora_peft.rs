//! Adapters that PEFT saved (tools/golden_lora.py) load here: scales follow r/α/rsLoRA and the rank
//! and alpha patterns, `eval --adapter` gives PEFT's loss, and `merge` writes the same weights as
//! PEFT's merge_and_unload (what transformers then loads).

// Native only: reads fixture folders and runs the CLI.
#![cfg(not(target_arch = "wasm32"))]

use std::path::{Path, PathBuf};
use std::process::Command;

use loratab::lora::Adapter;
use loratab::model::load_safetensors;

const CASES: [&str; 4] = ["gpt2-cattn", "llama-qv", "llama-all-rslora", "qwen2-qv"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn golden(case: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures/lora").join(case).join("golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn loratab(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_loratab")).args(args).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn scales_follow_peft() {
    for case in CASES {
        let g = golden(case);
        let adapter = Adapter::load_dir(&root().join("tests/fixtures/lora").join(case).join("adapter")).unwrap();
        let modules = g["modules"].as_object().unwrap();
        assert_eq!(adapter.modules.len(), modules.len(), "{case}");
        for (name, m) in modules {
            let pair = &adapter.modules[name];
            assert_eq!(pair.a.shape[0] as u64, m["r"].as_u64().unwrap(), "{case} {name}");
            assert!((pair.scale as f64 - m["scaling"].as_f64().unwrap()).abs() < 1e-5, "{case} {name}");
        }
    }
}

#[test]
fn eval_with_peft_adapter_matches_peft() {
    for case in CASES {
        let g = golden(case);
        let base = format!("tests/fixtures/{}", g["base"].as_str().unwrap());
        let adapter = format!("tests/fixtures/lora/{case}/adapter");
        let out = loratab(&["eval", "--model", &base, "--adapter", &adapter, "--text", "tests/fixtures/eval.txt"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let (got, want) = (v["loss"].as_f64().unwrap(), g["eval_loss_64"].as_f64().unwrap());
        assert!((got - want).abs() < 1e-4, "{case}: loratab {got} vs PEFT {want}");
        assert_eq!(v["tokens"], g["eval_tokens_64"]);
    }
}

#[test]
fn merge_writes_what_peft_merges() {
    for case in CASES {
        let g = golden(case);
        let base = format!("tests/fixtures/{}", g["base"].as_str().unwrap());
        let adapter = format!("tests/fixtures/lora/{case}/adapter");
        let out_dir = std::env::temp_dir().join(format!("loratab-merged-{case}-{}", std::process::id()));
        let out = out_dir.to_str().unwrap();
        loratab(&["merge", "--model", &base, "--adapter", &adapter, "--out", out]);
        let ours = load_safetensors("ours", &std::fs::read(out_dir.join("model.safetensors")).unwrap()).unwrap();
        let peft_file = root().join("tests/fixtures/lora").join(case).join("merged/model.safetensors");
        let peft = load_safetensors("peft", &std::fs::read(peft_file).unwrap()).unwrap();
        let mut keys: Vec<_> = peft.keys().collect();
        keys.sort();
        let mut ours_keys: Vec<_> = ours.keys().collect();
        ours_keys.sort();
        assert_eq!(ours_keys, keys, "{case}: same tensor names as transformers writes");
        for k in keys {
            assert_eq!(ours[k].shape, peft[k].shape, "{case} {k}");
            let worst = ours[k].data.iter().zip(&peft[k].data).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{case} {k}: {worst}");
        }
        // The merged folder is a model folder: it loads and scores PEFT's loss without the adapter.
        let v: serde_json::Value =
            serde_json::from_str(loratab(&["eval", "--model", out, "--text", "tests/fixtures/eval.txt"]).trim()).unwrap();
        assert!((v["loss"].as_f64().unwrap() - g["eval_loss_64"].as_f64().unwrap()).abs() < 1e-4, "{case}");
        std::fs::remove_dir_all(&out_dir).unwrap();
    }
}

#[test]
fn adapter_for_another_model_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_loratab"))
        .args(["eval", "--model", "tests/fixtures/gpt2-tiny", "--adapter", "tests/fixtures/lora/llama-qv/adapter"])
        .args(["--text", "tests/fixtures/eval.txt"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("trained on another base model"), "{err}");
    let missing = Path::new("tests/fixtures/none");
    assert!(Adapter::load_dir(&root().join(missing)).unwrap_err().to_string().contains("adapter_config.json is missing"));
}
