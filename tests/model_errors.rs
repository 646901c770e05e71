//! Bad model folders and inputs give typed errors whose sentences say what is wrong and what to do,
//! never a panic. Ends with a mutation fuzz of the loading path.

// Native only: these read files and run the CLI binary.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use loratab::model::{load_safetensors, Model, ModelError, ModelFiles};
use loratab::rng::Rng;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn files(name: &str) -> ModelFiles {
    ModelFiles::read_dir(&fixture(name)).unwrap()
}

fn load_err(files: &ModelFiles) -> ModelError {
    match Model::from_files(files) {
        Ok(_) => panic!("loading should have failed"),
        Err(e) => e,
    }
}

/// A safetensors file from f32 tensors (name, shape, values).
fn safetensors_bytes(tensors: &[(String, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, values) in tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [start, data.len()] }),
        );
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(header)).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend(header.as_bytes());
    out.extend(vec![0u8; data_len]);
    out
}

#[test]
fn missing_files_are_named() {
    let dir = std::env::temp_dir().join(format!("loratab-missing-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("gpt2-tiny").join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(fixture("gpt2-tiny").join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let err = ModelFiles::read_dir(&dir).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::MissingFile { .. }), "{err:?}");
    assert!(err.to_string().contains("model.safetensors is missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
    let err = ModelFiles::read_dir(Path::new("/nonexistent/model")).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("config.json is missing"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported() {
    let mut f = files("gpt2-tiny");
    let len = f.weights[0].1.len();
    f.weights[0].1.truncate(len / 2);
    let err = load_err(&f);
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err:?}");
    assert!(err.to_string().contains("not a valid safetensors file"), "{err}");
    assert!(err.to_string().contains("truncated or corrupted"), "{err}");
    // Shorter than the 8-byte length prefix.
    assert!(matches!(load_safetensors("x", &[1, 2, 3]), Err(ModelError::Safetensors { .. })));
}

#[test]
fn lying_headers_are_reported() {
    let cases = [
        // Offsets beyond the data.
        (r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, 8),
        // Byte count that does not match the shape.
        (r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#, 12),
        // Header length prefix larger than the file.
        (r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#, 4),
        // Not JSON at all.
        ("this is not json at all!", 0),
    ];
    for (header, data_len) in cases {
        let bytes = raw_file(header, data_len);
        let err = load_safetensors("model.safetensors", &bytes).map(|_| ()).unwrap_err();
        assert!(matches!(err, ModelError::Safetensors { .. }), "{header}: {err:?}");
    }
    // A length prefix pointing far past the end.
    let mut bytes = raw_file(r#"{}"#, 0);
    bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(load_safetensors("m", &bytes), Err(ModelError::Safetensors { .. })));
}

#[test]
fn shape_that_does_not_match_config_is_reported() {
    let mut f = files("gpt2-tiny");
    f.config = f.config.replace("\"n_positions\": 64", "\"n_positions\": 128");
    let err = load_err(&f);
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("wpe.weight") && msg.contains("[64, 36]") && msg.contains("[128, 36]"), "{msg}");
    assert!(msg.contains("do not belong together"), "{msg}");
}

#[test]
fn unsupported_dtype_is_reported() {
    let header = r#"{"transformer.wte.weight":{"dtype":"I8","shape":[4],"data_offsets":[0,4]}}"#;
    let mut padded = header.to_string();
    while padded.len() % 8 != 0 {
        padded.push(' ');
    }
    let err = load_safetensors("model.safetensors", &raw_file(&padded, 4)).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::UnsupportedDtype { .. }), "{err:?}");
    assert!(err.to_string().contains("F32, F16 and BF16"), "{err}");
}

#[test]
fn missing_tensor_is_reported() {
    let f = files("llama-tiny");
    let mut tensors = load_safetensors("m", &f.weights[0].1).unwrap();
    tensors.remove("model.layers.1.mlp.up_proj.weight");
    let list: Vec<_> = tensors.into_iter().map(|(k, t)| (k, t.shape, t.data)).collect();
    let mut broken = files("llama-tiny");
    broken.weights[0].1 = safetensors_bytes(&list);
    let err = load_err(&broken);
    assert!(err.to_string().contains("model.layers.1.mlp.up_proj.weight"), "{err}");
}

#[test]
fn non_finite_weights_are_refused_by_name() {
    let f = files("llama-tiny");
    let tensors = load_safetensors("m", &f.weights[0].1).unwrap();
    let mut list: Vec<_> = tensors.into_iter().map(|(k, t)| (k, t.shape, t.data)).collect();
    let bad = list.iter().position(|(k, _, _)| k == "model.layers.1.self_attn.v_proj.weight").unwrap();
    list[bad].2[5] = f32::NAN;
    let mut broken = files("llama-tiny");
    broken.weights[0].1 = safetensors_bytes(&list);
    let err = load_err(&broken);
    assert!(matches!(err, ModelError::NonFinite { ref name } if name == "model.layers.1.self_attn.v_proj.weight"), "{err:?}");
    assert!(err.to_string().contains("NaN or infinite"), "{err}");
}

#[test]
fn non_finite_adapters_are_refused_by_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora/llama-qv/adapter");
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let good = loratab::lora::Adapter::from_files(&config, &weights).unwrap();
    let mut list = Vec::new();
    for (module, pair) in &good.modules {
        let mut b = pair.b.data.clone();
        if module.ends_with("layers.0.self_attn.v_proj") {
            b[0] = f32::INFINITY;
        }
        list.push((format!("base_model.model.{module}.lora_A.weight"), pair.a.shape.clone(), pair.a.data.clone()));
        list.push((format!("base_model.model.{module}.lora_B.weight"), pair.b.shape.clone(), b));
    }
    let err = loratab::lora::Adapter::from_files(&config, &safetensors_bytes(&list)).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("layers.0.self_attn.v_proj.lora_B") && err.to_string().contains("NaN or infinite"), "{err}");
}

#[test]
fn unknown_model_type_is_reported() {
    let mut f = files("gpt2-tiny");
    f.config = f.config.replace("\"model_type\": \"gpt2\"", "\"model_type\": \"bert\"");
    let err = load_err(&f);
    assert!(matches!(err, ModelError::UnsupportedModelType(ref t) if t == "bert"), "{err:?}");
    assert!(err.to_string().contains("gpt2, llama, mistral and qwen2"), "{err}");
}

#[test]
fn nonsense_config_is_reported() {
    let mut f = files("llama-tiny");
    f.config = f.config.replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 4");
    let err = load_err(&f);
    assert!(err.to_string().contains("6 attention heads cannot be shared by 4"), "{err}");
    f.config = "{ not json".into();
    assert!(load_err(&f).to_string().contains("not valid JSON"));
}

#[test]
fn tokenizer_larger_than_embedding_is_reported() {
    // Cut the embedding (and the config) to 200 rows; the tokenizer still has 300 tokens.
    let f = files("gpt2-tiny");
    let mut tensors: HashMap<_, _> = load_safetensors("m", &f.weights[0].1).unwrap();
    let wte = tensors.get_mut("transformer.wte.weight").unwrap();
    wte.data.truncate(200 * 36);
    wte.shape = vec![200, 36];
    let list: Vec<_> = tensors.into_iter().map(|(k, t)| (k, t.shape, t.data)).collect();
    let mut small = files("gpt2-tiny");
    small.weights[0].1 = safetensors_bytes(&list);
    small.config = small.config.replace("\"vocab_size\": 300", "\"vocab_size\": 200");
    let err = load_err(&small);
    assert!(matches!(err, ModelError::VocabMismatch { tokenizer: 300, model: 200 }), "{err:?}");
    assert!(err.to_string().contains("does not belong to this model"), "{err}");
}

#[test]
fn empty_text_is_reported() {
    let (model, tokenizer) = Model::load_dir(&fixture("gpt2-tiny")).unwrap();
    assert!(tokenizer.encode("").unwrap().is_empty());
    let ctx = pollster::block_on(loratab::gpu::GpuContext::new()).unwrap();
    let gm = pollster::block_on(loratab::model::GpuModel::upload(&ctx, &model)).unwrap();
    for text in ["", "a"] {
        let tokens = tokenizer.encode(text).unwrap();
        let err = pollster::block_on(loratab::eval::eval(&ctx, &gm, &tokens, 8)).unwrap_err();
        assert!(matches!(err, ModelError::EmptyText), "{text:?}: {err:?}");
        assert!(err.to_string().contains("at least two tokens"), "{err}");
    }
    // Token ids outside the vocabulary never reach a kernel.
    let err = pollster::block_on(gm.forward(&ctx, &[1, 300], 0)).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::TokenOutOfRange { id: 300, vocab: 300 }), "{err:?}");
    // Longer than the context.
    let err = pollster::block_on(gm.forward(&ctx, &[1; 65], 0)).map(|_| ()).unwrap_err();
    assert!(matches!(err, ModelError::TooLong { tokens: 65, max: 64 }), "{err:?}");
}

/// Mutation fuzz of config.json + safetensors loading: random byte flips, truncations, inserted
/// bytes and header edits must give Ok or a typed error, never a panic. `LORATAB_FUZZ_ITERS` runs it
/// longer (the default keeps the suite fast).
#[test]
fn fuzz_loading_never_panics() {
    let iters: usize = std::env::var("LORATAB_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
    let bases = [files("gpt2-tiny"), files("llama-tiny-tied-bf16"), files("qwen2-tiny")];
    let mut rng = Rng::new(0xF022);
    for i in 0..iters {
        let base = &bases[i % bases.len()];
        let mut weights = base.weights[0].1.clone();
        let mut config = base.config.clone().into_bytes();
        let header_end = 8 + u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        for _ in 0..1 + rng.next_u64() % 4 {
            let target: &mut Vec<u8> = if rng.next_u64() % 3 == 0 { &mut config } else { &mut weights };
            if target.is_empty() {
                continue;
            }
            // Aim most mutations at the header, where the structure lives.
            let limit = if rng.next_u64() % 4 != 0 { header_end.min(target.len()) } else { target.len() };
            let pos = (rng.next_u64() as usize) % limit.max(1);
            match rng.next_u64() % 5 {
                0 => target[pos] ^= 1 << (rng.next_u64() % 8),
                1 => target[pos] = b"0123456789[]{},:\"-e."[(rng.next_u64() % 20) as usize],
                2 => target.truncate(pos),
                3 => target.insert(pos, (rng.next_u64() % 256) as u8),
                _ => {
                    let len = target.len();
                    target[pos..].rotate_left((rng.next_u64() as usize) % (len - pos).max(1));
                }
            }
        }
        let files = ModelFiles {
            config: String::from_utf8_lossy(&config).into_owned(),
            weights: vec![("model.safetensors".into(), weights)],
            tokenizer: base.tokenizer.clone(),
            ..Default::default()
        };
        let outcome = std::panic::catch_unwind(|| Model::from_files(&files).map(|_| ()));
        assert!(outcome.is_ok(), "iteration {i}: loading panicked");
    }
}

/// A checkpoint saved in shards (model.safetensors.index.json + several files) loads to the same
/// model as the single file.
#[test]
fn sharded_checkpoint_loads() {
    let dir = std::env::temp_dir().join(format!("loratab-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(fixture("llama-tiny").join(f), dir.join(f)).unwrap();
    }
    let single = files("llama-tiny");
    let tensors = load_safetensors("m", &single.weights[0].1).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let list: Vec<_> = part.iter().map(|k| (k.clone(), tensors[k].shape.clone(), tensors[k].data.clone())).collect();
        std::fs::write(dir.join(&file), safetensors_bytes(&list)).unwrap();
        for k in part {
            weight_map.insert(k.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();

    let (sharded, _) = Model::load_dir(&dir).unwrap();
    let (whole, _) = Model::from_files(&single).unwrap();
    let tokens = [5, 17, 42, 99, 3];
    assert_eq!(loratab::reference::model::forward(&sharded, &tokens), loratab::reference::model::forward(&whole, &tokens));
    // A shard the index names but the folder lacks is reported by name.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let err = ModelFiles::read_dir(&dir).map(|_| ()).unwrap_err();
    assert!(err.to_string().contains("model-00002-of-00002.safetensors is missing"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Mistral's sliding window: the context is capped at the window (where full attention is exact);
/// qwen2's `use_sliding_window: false` leaves it alone.
#[test]
fn sliding_window_caps_the_context() {
    let llama = std::fs::read_to_string(fixture("llama-tiny").join("config.json")).unwrap();
    let mistral = llama.replace("\"model_type\": \"llama\"", "\"model_type\": \"mistral\", \"sliding_window\": 16");
    let c = loratab::model::Config::from_json(&mistral).unwrap();
    assert_eq!((c.model_type.as_str(), c.max_positions), ("mistral", 16));
    let off = mistral.replace("\"sliding_window\": 16", "\"sliding_window\": 16, \"use_sliding_window\": false");
    assert_eq!(loratab::model::Config::from_json(&off).unwrap().max_positions, 64);
}
