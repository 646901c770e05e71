//! Bad model folders and inputs give typed errors whose sentences say what is wrong and what to do,
//! never a panic. Ends with the bounded mutation fuzz of every reader of untrusted bytes (`fuzz`).

// Native only: these read files and run the CLI binary.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use loratab::model::{load_safetensors, Model, ModelError, ModelFiles};

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
    let list: Vec<_> = tensors.into_iter().map(|(k, t)| (k, t.shape, t.data)).collect();
    let bad = list.iter().position(|(k, _, _)| k == "model.layers.1.self_attn.v_proj.weight").unwrap();
    for value in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut list = list.clone();
        list[bad].2[5] = value;
        let mut broken = files("llama-tiny");
        broken.weights[0].1 = safetensors_bytes(&list);
        let err = load_err(&broken);
        assert!(matches!(err, ModelError::NonFinite { ref name } if name == "model.layers.1.self_attn.v_proj.weight"), "{value}: {err:?}");
        assert!(err.to_string().contains("NaN or infinite"), "{err}");
    }
}

#[test]
fn non_finite_adapters_are_refused_by_name() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lora/llama-qv/adapter");
    let config = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let good = loratab::lora::Adapter::from_files(&config, &weights).unwrap();
    for (value, half) in [(f32::INFINITY, "lora_B"), (f32::NEG_INFINITY, "lora_A"), (f32::NAN, "lora_B")] {
        let mut list = Vec::new();
        for (module, pair) in &good.modules {
            let (mut a, mut b) = (pair.a.data.clone(), pair.b.data.clone());
            if module.ends_with("layers.0.self_attn.v_proj") {
                let target = if half == "lora_A" { &mut a } else { &mut b };
                target[0] = value;
            }
            list.push((format!("base_model.model.{module}.lora_A.weight"), pair.a.shape.clone(), a));
            list.push((format!("base_model.model.{module}.lora_B.weight"), pair.b.shape.clone(), b));
        }
        let err = loratab::lora::Adapter::from_files(&config, &safetensors_bytes(&list)).map(|_| ()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("layers.0.self_attn.v_proj.{half}")) && text.contains("NaN or infinite"), "{value}: {text}");
    }
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

/// A bounded, seeded mutation fuzz of every reader of untrusted bytes: safetensors files, the shards
/// index, config.json, tokenizer.json, adapter_config.json + adapter tensors, GGUF files, zip
/// archives as the page reads them, jsonl examples and chat templates.
///
/// Each target starts from valid files (so mutations reach past the first check) and applies one to
/// four structure-aware mutations: bit flips, JSON tokens and huge or negative numbers in place of
/// digits, little-endian u32/u64 length and count fields overwritten with huge values, truncation,
/// insertion, deletion and duplication, aimed mostly at the part of the file that holds its structure
/// (headers, tensor tables, central directories). Every input runs on its own thread and must, within
/// `LIMIT`, return Ok or a typed error with a sentence: a panic, a hang, or a peak of heap bytes on
/// that thread above `64 × input + 16 MiB` (a counting allocator, per thread) fails the test. A
/// failing input is written under the test's temporary folder; saved as
/// `tests/fixtures/fuzz/<target>-<name>` it is replayed first on every run.
///
/// `LORATAB_FUZZ_SEED` (default 0x10ad) and `LORATAB_FUZZ_ITERS` (inputs per target; defaults sized
/// for about a minute in all) change the run; both are printed.
mod fuzz {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    use loratab::rng::Rng;

    /// Heap bytes live on this thread, their peak, and whether this thread is a fuzz input's.
    struct Counting;

    thread_local! {
        static LIVE: Cell<isize> = const { Cell::new(0) };
        static PEAK: Cell<isize> = const { Cell::new(0) };
        static FUZZING: Cell<bool> = const { Cell::new(false) };
    }

    /// One allocation of more than this on a fuzz thread is refused (the process then stops with
    /// "memory allocation of N bytes failed"): no input here is near a megabyte.
    const ONE_ALLOCATION: usize = 1 << 30;

    fn note(delta: isize) {
        let _ = LIVE.try_with(|live| {
            let now = live.get() + delta;
            live.set(now);
            let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
        });
    }

    fn refused(size: usize) -> bool {
        size > ONE_ALLOCATION && FUZZING.try_with(Cell::get).unwrap_or(false)
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            if refused(l.size()) {
                return std::ptr::null_mut();
            }
            note(l.size() as isize);
            System.alloc(l)
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            if refused(l.size()) {
                return std::ptr::null_mut();
            }
            note(l.size() as isize);
            System.alloc_zeroed(l)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            note(-(l.size() as isize));
            System.dealloc(p, l)
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
            if refused(new) {
                return std::ptr::null_mut();
            }
            note(new as isize - l.size() as isize);
            System.realloc(p, l, new)
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// `f`'s result and the peak of heap bytes it held live on this thread.
    pub fn peak<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LIVE.with(|l| l.set(0));
        PEAK.with(|p| p.set(0));
        let out = f();
        (out, PEAK.with(Cell::get).max(0) as usize)
    }

    /// Per input (debug build, a busy machine): far above any real input's time.
    const LIMIT: Duration = Duration::from_secs(10);

    /// What a reader made of one input: Ok, or its error's sentence.
    pub type Reader = Arc<dyn Fn(&[u8]) -> Result<(), String> + Send + Sync>;

    /// A valid input to mutate and the byte range that holds its structure.
    pub struct Seed {
        pub bytes: Vec<u8>,
        pub focus: std::ops::Range<usize>,
    }

    impl Seed {
        pub fn whole(bytes: Vec<u8>) -> Self {
            Self { focus: 0..bytes.len(), bytes }
        }
    }

    fn env_or(key: &str, default: u64) -> u64 {
        std::env::var(key).ok().and_then(|v| {
            let v = v.trim();
            match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => v.parse().ok(),
            }
        })
        .unwrap_or(default)
    }

    /// Run `read` on `input` on a thread of its own: its sentence or what went wrong.
    fn run_one(read: &Reader, input: Vec<u8>) -> Result<(Result<(), String>, usize), String> {
        let (tx, rx) = mpsc::channel();
        let read = read.clone();
        let len = input.len();
        std::thread::Builder::new()
            .name("fuzz input".into())
            .spawn(move || {
                FUZZING.with(|f| f.set(true));
                LIVE.with(|l| l.set(0));
                PEAK.with(|p| p.set(0));
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&input)));
                let peak = PEAK.with(Cell::get).max(0) as usize;
                drop(input);
                let _ = tx.send(outcome.map(|r| (r, peak)).map_err(|e| {
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
                }));
            })
            .expect("a thread");
        match rx.recv_timeout(LIMIT) {
            Ok(Ok((r, peak))) if peak > 64 * len + (16 << 20) => Err(format!("it took {peak} bytes of heap for {len} bytes of input ({r:?})")),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => Err(format!("it panicked: {panic}")),
            Err(_) => Err(format!("it ran past {LIMIT:?}")),
        }
    }

    const JSON_TOKENS: &[&str] = &["null", "true", "[]", "{}", "\"\"", "[[[[[[[[[[", "{\"a\":", "-1", "0", "NaN", "1e309", "\"\\u0000\"", ",", ":", "\""];
    const NUMBERS: &[&str] = &["0", "-1", "99999999999999999999", "18446744073709551615", "4294967296", "2147483648", "1e308", "-1e309", "0.5", "3"];
    const U32S: &[u32] = &[0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 255, 65535];
    const U64S: &[u64] = &[0, 1, u64::MAX, i64::MAX as u64, 1 << 32, 1 << 40, 1 << 62, 0xffff_ffff];

    /// One to four mutations of `seed`, three in four aimed inside `focus`.
    fn mutate(rng: &mut Rng, seed: &[u8], focus: &std::ops::Range<usize>) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.next_u64() % 4 {
            let len = b.len();
            let pick = |rng: &mut Rng| -> usize {
                let (lo, hi) = if rng.next_u64() % 4 != 0 && focus.start < len.min(focus.end) { (focus.start, len.min(focus.end)) } else { (0, len) };
                lo + (rng.next_u64() as usize) % (hi - lo).max(1)
            };
            if len == 0 {
                b.extend(JSON_TOKENS[(rng.next_u64() as usize) % JSON_TOKENS.len()].as_bytes());
                continue;
            }
            let pos = pick(rng).min(len - 1);
            match rng.next_u64() % 10 {
                0 => b[pos] ^= 1 << (rng.next_u64() % 8),
                1 => b[pos] = b"0123456789[]{},:\"-e.\\\x00\xff"[(rng.next_u64() % 23) as usize],
                2 => b.truncate(pos),
                3 => {
                    let n = 1 + (rng.next_u64() % 8) as usize;
                    let extra: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
                    b.splice(pos..pos, extra);
                }
                4 => {
                    let end = (pos + 1 + (rng.next_u64() % 64) as usize).min(len);
                    b.drain(pos..end);
                }
                5 => {
                    let end = (pos + 1 + (rng.next_u64() % 256) as usize).min(len);
                    let chunk = b[pos..end].to_vec();
                    let at = pick(rng).min(b.len());
                    b.splice(at..at, chunk);
                }
                6 if pos + 4 <= len => {
                    let v = if rng.next_u64() % 4 == 0 { len as u32 + 1 } else { U32S[(rng.next_u64() as usize) % U32S.len()] };
                    b[pos..pos + 4].copy_from_slice(&v.to_le_bytes());
                }
                7 if pos + 8 <= len => {
                    let v = if rng.next_u64() % 4 == 0 { len as u64 + 1 } else { U64S[(rng.next_u64() as usize) % U64S.len()] };
                    b[pos..pos + 8].copy_from_slice(&v.to_le_bytes());
                }
                8 => {
                    // A number in the text: a huge, negative, fractional or overflowing one instead.
                    let Some(start) = (pos..len).chain(0..pos).find(|&i| b[i].is_ascii_digit()) else { continue };
                    let end = (start..len).find(|&i| !b[i].is_ascii_digit()).unwrap_or(len);
                    let n = NUMBERS[(rng.next_u64() as usize) % NUMBERS.len()];
                    b.splice(start..end, n.bytes());
                }
                _ => {
                    let t = JSON_TOKENS[(rng.next_u64() as usize) % JSON_TOKENS.len()];
                    b.splice(pos..pos, t.bytes());
                }
            }
        }
        b
    }

    /// Replay `tests/fixtures/fuzz/<target>-*` through `read`, then fuzz `iters` inputs (default
    /// `default_iters`) mutated from the seeds in turn.
    pub fn run(target: &str, read: Reader, seeds: Vec<Seed>, default_iters: u64) {
        let seed = env_or("LORATAB_FUZZ_SEED", 0x10ad);
        let iters = env_or("LORATAB_FUZZ_ITERS", default_iters);
        let start = Instant::now();
        let mut failures = Vec::new();
        let dir = super::fixture("fuzz");
        let mut replayed = 0;
        let mut saved: Vec<_> = std::fs::read_dir(&dir).into_iter().flatten().flatten().map(|e| e.path()).collect();
        saved.sort();
        for path in saved {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.strip_prefix(target).is_some_and(|rest| rest.starts_with('-')) {
                replayed += 1;
                if let Err(why) = run_one(&read, std::fs::read(&path).unwrap()) {
                    failures.push(format!("{name}: {why}"));
                }
            }
        }
        // The name keeps targets apart under one seed.
        let mut rng = Rng::new(seed ^ target.bytes().fold(0u64, |h, c| h.wrapping_mul(131).wrapping_add(c as u64)));
        let (mut ok, mut refused, mut most) = (0, 0, 0);
        for i in 0..iters {
            let s = &seeds[(i % seeds.len() as u64) as usize];
            let input = mutate(&mut rng, &s.bytes, &s.focus);
            match run_one(&read, input.clone()) {
                Ok((Ok(()), peak)) => {
                    ok += 1;
                    most = most.max(peak);
                }
                Ok((Err(sentence), peak)) => {
                    most = most.max(peak);
                    refused += 1;
                    if sentence.trim().is_empty() {
                        failures.push(format!("input {i}: an error without a sentence"));
                    }
                }
                Err(why) => {
                    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz-{target}-{seed:x}-{i}"));
                    std::fs::write(&path, &input).unwrap();
                    failures.push(format!("input {i} ({}): {why}", path.display()));
                }
            }
            if failures.len() >= 5 {
                break;
            }
        }
        eprintln!(
            "fuzz {target}: seed {seed:#x}, {iters} inputs (LORATAB_FUZZ_SEED, LORATAB_FUZZ_ITERS), {replayed} saved replayed: {ok} read, {refused} refused with a sentence, {} failed; heap peak {:.1} MB; {:.1} s",
            failures.len(),
            most as f64 / 1e6,
            start.elapsed().as_secs_f64()
        );
        assert!(failures.is_empty(), "fuzz {target}: copy a failing input to tests/fixtures/fuzz/{target}-<what> to keep it as a regression:\n{}", failures.join("\n"));
    }
}

fn read_fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).unwrap()
}

/// The safetensors header's end (8 + its length): where the structure of the file lies.
fn header_end(st: &[u8]) -> usize {
    8 + u64::from_le_bytes(st[..8].try_into().unwrap()) as usize
}

fn sentence<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// A model folder with one file replaced by the fuzz input.
fn model_reader(name: &'static str, part: &'static str) -> fuzz::Reader {
    let base = files(name);
    std::sync::Arc::new(move |input: &[u8]| {
        let mut f = base.clone();
        match part {
            "config" => f.config = String::from_utf8_lossy(input).into_owned(),
            "tokenizer" => f.tokenizer = input.to_vec(),
            _ => f.weights = vec![("model.safetensors".into(), input.to_vec())],
        }
        Model::from_files(&f).map(|_| ()).map_err(sentence)
    })
}

#[test]
fn fuzz_safetensors() {
    for name in ["gpt2-tiny", "llama-tiny-tied-bf16"] {
        let st = files(name).weights[0].1.clone();
        fuzz::run(&format!("safetensors-{name}"), model_reader(name, "weights"), vec![fuzz::Seed { focus: 0..header_end(&st), bytes: st }], 5000);
    }
}

#[test]
fn fuzz_config_json() {
    for name in ["qwen2-tiny", "gpt2-tiny"] {
        fuzz::run(&format!("config-{name}"), model_reader(name, "config"), vec![fuzz::Seed::whole(files(name).config.into_bytes())], 5000);
    }
}

#[test]
fn fuzz_tokenizer_json() {
    let tokenizer = files("llama-tiny").tokenizer;
    // Loaded with the model (checked against its embedding), then used.
    let read = model_reader("llama-tiny", "tokenizer");
    let used: fuzz::Reader = std::sync::Arc::new(move |input: &[u8]| {
        read(input)?;
        let tok = loratab::model::Tokenizer::from_bytes(input).map_err(sentence)?;
        let ids = tok.encode("It is a truth universally acknowledged, ünïcödé 🙂").map_err(sentence)?;
        tok.decode(&ids).map(|_| ()).map_err(sentence)
    });
    fuzz::run("tokenizer", used, vec![fuzz::Seed::whole(tokenizer)], 5000);
}

/// llama-tiny as the page gets a dropped folder: a zip of config.json, tokenizer.json,
/// model.safetensors.index.json and two shards.
fn sharded_zip(index: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let single = files("llama-tiny");
    let tensors = load_safetensors("m", &single.weights[0].1).unwrap();
    let mut names: Vec<_> = tensors.keys().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    let mut shards = Vec::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let list: Vec<_> = part.iter().map(|k| (k.clone(), tensors[k].shape.clone(), tensors[k].data.clone())).collect();
        shards.push((file.clone(), safetensors_bytes(&list)));
        for k in part {
            weight_map.insert(k.clone(), file.clone().into());
        }
    }
    let made = serde_json::to_vec_pretty(&serde_json::json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map })).unwrap();
    let index = index.unwrap_or(&made).to_vec();
    let mut members: Vec<(&str, &[u8])> = vec![("config.json", single.config.as_bytes()), ("tokenizer.json", &single.tokenizer), ("model.safetensors.index.json", &index)];
    members.extend(shards.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    (loratab::zip::store(&members).unwrap(), made)
}

fn dropped(zip: &[u8]) -> Result<(), String> {
    let files = loratab::studio::model_files(vec![("model.zip".into(), zip.to_vec())]).map_err(sentence)?;
    Model::from_files(&files).map(|_| ()).map_err(sentence)
}

#[test]
fn fuzz_shards_index_and_zip() {
    let (zip, index) = sharded_zip(None);
    let read: fuzz::Reader = std::sync::Arc::new(|input: &[u8]| dropped(&sharded_zip(Some(input)).0));
    fuzz::run("shards-index", read, vec![fuzz::Seed::whole(index)], 1500);
    // The zip itself: mostly its central directory (at the end) and local headers.
    let eocd = zip.len() - 22;
    let cd = u32::from_le_bytes(zip[eocd + 16..eocd + 20].try_into().unwrap()) as usize;
    let read: fuzz::Reader = std::sync::Arc::new(|input: &[u8]| dropped(input));
    fuzz::run("zip", read, vec![fuzz::Seed { focus: cd..zip.len(), bytes: zip.clone() }, fuzz::Seed { focus: 0..200, bytes: zip }], 5000);
}

#[test]
fn fuzz_adapter_files() {
    let dir = "lora/llama-qv/adapter";
    let (config, weights) = (read_fixture(&format!("{dir}/adapter_config.json")), read_fixture(&format!("{dir}/adapter_model.safetensors")));
    // Loaded, then merged into the model it was made for (shapes and names checked there).
    let (model, _) = Model::from_files(&files("llama-tiny")).unwrap();
    let apply = move |config: &[u8], weights: &[u8]| -> Result<(), String> {
        let config = std::str::from_utf8(config).map_err(sentence)?;
        let adapter = loratab::lora::Adapter::from_files(config, weights).map_err(sentence)?;
        loratab::lora::merge(&mut model.clone(), &adapter).map_err(sentence)
    };
    let apply = std::sync::Arc::new(apply);
    let (a, w) = (apply.clone(), weights.clone());
    fuzz::run("adapter-config", std::sync::Arc::new(move |input: &[u8]| a(input, &w)), vec![fuzz::Seed::whole(config.clone())], 5000);
    let (a, c) = (apply, config);
    fuzz::run("adapter-tensors", std::sync::Arc::new(move |input: &[u8]| a(&c, input)), vec![fuzz::Seed { focus: 0..header_end(&weights), bytes: weights }], 5000);
}

#[test]
fn fuzz_gguf() {
    let gguf = read_fixture("gguf/tiny.gguf");
    // The header, metadata and tensor table: everything before the first tensor's data.
    let g = loratab::gguf::Gguf::parse(&gguf).unwrap();
    let first = g.tensors.iter().map(|t| g.raw(t).as_ptr() as usize - gguf.as_ptr() as usize).min().unwrap();
    let read: fuzz::Reader = std::sync::Arc::new(|input: &[u8]| {
        let imported = loratab::gguf::import(input).map_err(sentence)?;
        imported.model().map(|_| ()).map_err(sentence)
    });
    fuzz::run("gguf", read, vec![fuzz::Seed { focus: 0..first, bytes: gguf.clone() }, fuzz::Seed::whole(gguf)], 5000);
}

/// jsonl examples and the chat templates of tokenizer_config.json, rendered and tokenized as
/// training does.
#[test]
fn fuzz_examples_and_chat_templates() {
    use loratab::train::{parse_examples, ChatTemplate};
    let tok = std::sync::Arc::new(loratab::model::Tokenizer::from_bytes(&read_fixture("chat/tokenizer.json")).unwrap());
    let golden: serde_json::Value = serde_json::from_slice(&read_fixture("chat/golden.json")).unwrap();
    let templates = golden["templates"].as_object().unwrap().clone();
    let jsonl = concat!(
        "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"Capital of France?\"}, {\"role\": \"assistant\", \"content\": \"Paris.\"}]}\n",
        "{\"prompt\": \"2 + 2 =\", \"completion\": \" 4\"}\n",
        "{\"text\": \"It is a truth universally acknowledged.\"}\n",
        "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi ünïcödé 🙂\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}]}\n",
    );
    let smollm = templates["smollm2"].clone();
    let t = tok.clone();
    let read: fuzz::Reader = std::sync::Arc::new(move |input: &[u8]| {
        let text = std::str::from_utf8(input).map_err(sentence)?;
        let parsed = parse_examples(text);
        let template = ChatTemplate::new(smollm["template"].as_str().unwrap(), None, smollm["eos_token"].as_str().map(str::to_string)).unwrap();
        let (_good, _bad) = template.examples(&t, &parsed.records);
        let _ = ChatTemplate::plain(Some("<|im_end|>".into())).examples(&t, &parsed.records);
        Ok(())
    });
    fuzz::run("examples", read, vec![fuzz::Seed::whole(jsonl.as_bytes().to_vec())], 5000);

    let records = parse_examples(jsonl).records;
    let read: fuzz::Reader = std::sync::Arc::new(move |input: &[u8]| {
        let config: serde_json::Value = serde_json::from_slice(input).map_err(sentence)?;
        let Some(template) = ChatTemplate::from_tokenizer_config(&config).map_err(sentence)? else { return Ok(()) };
        let (_good, bad) = template.examples(&tok, &records);
        for (_, e) in bad {
            assert!(!e.to_string().trim().is_empty(), "an error without a sentence");
        }
        Ok(())
    });
    let seeds = templates
        .values()
        .map(|t| fuzz::Seed::whole(serde_json::to_vec(&serde_json::json!({ "chat_template": t["template"], "bos_token": t["bos_token"], "eos_token": t["eos_token"] })).unwrap()))
        .collect();
    fuzz::run("chat-template", read, seeds, 5000);
}

/// Sizes and counts that a file declares but cannot hold are refused before anything is allocated
/// for them: the heap peak stays near the input's own size.
#[test]
fn huge_declared_sizes_are_refused_before_allocating() {
    // A zip whose central directory lists one 64 kB file 1000 times (64 MB if copied each time).
    let data = vec![7u8; 64 << 10];
    let one = loratab::zip::store(&[("model.safetensors", &data)]).unwrap();
    let cd_at = u32::from_le_bytes(one[one.len() - 6..one.len() - 2].try_into().unwrap()) as usize;
    let entry = one[cd_at..one.len() - 22].to_vec();
    let mut bomb = one[..cd_at].to_vec();
    for _ in 0..1000 {
        bomb.extend(&entry);
    }
    let mut end = one[one.len() - 22..].to_vec();
    end[8..10].copy_from_slice(&1000u16.to_le_bytes());
    end[10..12].copy_from_slice(&1000u16.to_le_bytes());
    end[12..16].copy_from_slice(&((entry.len() * 1000) as u32).to_le_bytes());
    bomb.extend(end);
    let (r, peak) = fuzz::peak(|| loratab::zip::read(&bomb));
    assert_eq!(r.unwrap_err().to_string(), "the zip file is damaged or not a zip file (its files overlap)");
    assert!(peak < 2 * bomb.len(), "{peak} bytes for a {}-byte zip", bomb.len());

    // GGUF: a tensor count, a metadata count and an array length of 2^62.
    let tiny = read_fixture("gguf/tiny.gguf");
    let mut counts = tiny.clone();
    counts[8..16].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let mut kv = tiny.clone();
    kv[16..24].copy_from_slice(&(1u64 << 62).to_le_bytes());
    // The first metadata value that is an array: its length field.
    let array = {
        let mut at = 24;
        let string = |at: &mut usize| {
            let n = u64::from_le_bytes(tiny[*at..*at + 8].try_into().unwrap()) as usize;
            *at += 8 + n;
        };
        loop {
            string(&mut at);
            let code = u32::from_le_bytes(tiny[at..at + 4].try_into().unwrap());
            at += 4;
            match code {
                9 => break at + 4,
                8 => string(&mut at),
                0 | 1 | 7 => at += 1,
                2 | 3 => at += 2,
                4..=6 => at += 4,
                _ => at += 8,
            }
        }
    };
    let mut arr = tiny.clone();
    arr[array..array + 8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    for (what, bytes) in [("tensor count", counts), ("metadata count", kv), ("array length", arr)] {
        let (r, peak) = fuzz::peak(|| loratab::gguf::import(&bytes).map(|_| ()));
        let err = r.unwrap_err().to_string();
        assert!(err.starts_with("the file is truncated"), "{what}: {err}");
        assert!(peak < 1 << 20, "{what}: {peak} bytes");
    }

    // safetensors: a header length of 2^62, and a tensor declaring 2^40 values.
    let mut st = files("llama-tiny").weights[0].1.clone();
    st[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
    let (r, peak) = fuzz::peak(|| load_safetensors("model.safetensors", &st).map(|_| ()));
    assert!(r.unwrap_err().to_string().starts_with("model.safetensors"), "header length");
    assert!(peak < 1 << 20, "header length: {peak} bytes");
    let header = r#"{"w":{"dtype":"F32","shape":[1048576,1048576],"data_offsets":[0,16]}}"#;
    let lying = raw_file(header, 16);
    let (r, peak) = fuzz::peak(|| load_safetensors("model.safetensors", &lying).map(|_| ()));
    assert!(r.is_err() && peak < 1 << 20, "{peak} bytes");
}
