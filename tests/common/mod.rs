//! One GPU test suite, two harnesses: each `gpu_test!` body runs natively under `cargo test`
//! (Vulkan/Metal/DX12, Mesa lavapipe on CI) and in headless Chromium's WebGPU under
//! wasm-bindgen-test (`cargo test --target wasm32-unknown-unknown`, see ./dev).

#![allow(dead_code)]

use std::collections::BTreeMap;

use loratab::gguf::Value;
use loratab::gpu::GpuContext;

#[cfg(target_arch = "wasm32")]
wasm_bindgen_test::wasm_bindgen_test_configure!(run_in_browser);

/// Declare an async GPU test that runs on both harnesses.
#[macro_export]
macro_rules! gpu_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[cfg(not(target_arch = "wasm32"))]
        #[test]
        fn $name() {
            pollster::block_on(async $body)
        }

        $(#[$meta])*
        #[cfg(target_arch = "wasm32")]
        #[wasm_bindgen_test::wasm_bindgen_test]
        async fn $name() $body
    };
}

/// A fresh GPU context; a test fails with the typed error's sentence if there is no GPU.
pub async fn gpu() -> GpuContext {
    match GpuContext::new().await {
        Ok(ctx) => ctx,
        Err(e) => panic!("no GPU for the GPU tests: {e}"),
    }
}

/// Largest |got − want| (absolute). The two must have the same, non-zero length: a truncated or
/// empty output fails here rather than comparing only a prefix. A NaN or an infinity on either
/// side counts as an infinite difference (`f32::max` alone would drop a NaN).
pub fn max_abs_diff(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    assert!(!want.is_empty(), "{what}: nothing to compare");
    got.iter().zip(want).fold(0.0f32, |worst, (&a, &b)| {
        let e = (a - b).abs();
        if e.is_finite() { worst.max(e) } else { f32::INFINITY }
    })
}

/// `loratab::selftest::max_error` (relative to max(1, |want|)), after asserting the two have the
/// same, non-zero length, so a mismatch names itself instead of reading as an infinite error.
pub fn max_rel_error(got: &[f32], want: &[f32], what: &str) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: {} values, expected {}", got.len(), want.len());
    assert!(!want.is_empty(), "{what}: nothing to compare");
    loratab::selftest::max_error(got, want)
}

/// A GGUF file as `loratab import-gguf` writes it out (weights in f16 when `f16`, else f32), read
/// back the way `loratab eval --model` reads the folder.
pub fn gguf_model_files(gguf: &[u8], f16: bool) -> loratab::model::ModelFiles {
    let files = loratab::gguf::import(gguf).unwrap().files(f16).unwrap();
    let get = |name: &str| files.iter().find(|(n, _)| *n == name).unwrap().1.clone();
    loratab::model::ModelFiles {
        config: String::from_utf8(get("config.json")).unwrap(),
        weights: vec![("model.safetensors".into(), get("model.safetensors"))],
        tokenizer: get("tokenizer.json"),
        generation_config: Some(String::from_utf8(get("generation_config.json")).unwrap()),
        tokenizer_config: Some(String::from_utf8(get("tokenizer_config.json")).unwrap()),
    }
}

/// A GGUF tensor for [`write_gguf`]: name, ggml dims (ne0 first), type code, stored bytes.
pub type GgufTensor = (String, Vec<u64>, u32, Vec<u8>);

/// A GGUF writer for tests: metadata and tensors (name, ggml dims, type code, bytes) → a v3 file.
pub fn write_gguf(metadata: &BTreeMap<String, Value>, tensors: &[GgufTensor]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    fn code(v: &Value) -> u32 {
        match v {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::Str(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    fn value(out: &mut Vec<u8>, v: &Value) {
        match v {
            Value::U8(x) => out.push(*x),
            Value::I8(x) => out.push(*x as u8),
            Value::U16(x) => out.extend(x.to_le_bytes()),
            Value::I16(x) => out.extend(x.to_le_bytes()),
            Value::U32(x) => out.extend(x.to_le_bytes()),
            Value::I32(x) => out.extend(x.to_le_bytes()),
            Value::F32(x) => out.extend(x.to_le_bytes()),
            Value::Bool(x) => out.push(*x as u8),
            Value::Str(s) => string(out, s),
            Value::Array(items) => {
                out.extend(items.first().map_or(0, code).to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                items.iter().for_each(|i| value(out, i));
            }
            Value::U64(x) => out.extend(x.to_le_bytes()),
            Value::I64(x) => out.extend(x.to_le_bytes()),
            Value::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
    let align = metadata.get("general.alignment").and_then(Value::as_int).unwrap_or(32) as usize;
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        string(&mut out, k);
        out.extend(code(v).to_le_bytes());
        value(&mut out, v);
    }
    let mut data = Vec::new();
    for (name, dims, kind, bytes) in tensors {
        string(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| out.extend(d.to_le_bytes()));
        out.extend(kind.to_le_bytes());
        out.extend((data.len() as u64).to_le_bytes());
        data.extend(bytes);
        data.resize(data.len().div_ceil(align) * align, 0);
    }
    out.resize(out.len().div_ceil(align) * align, 0);
    out.extend(data);
    out
}

/// A GGUF file taken apart (metadata, tensors), to be changed and written again with [`write_gguf`].
pub fn gguf_parts(bytes: &[u8]) -> (BTreeMap<String, Value>, Vec<GgufTensor>) {
    let g = loratab::gguf::Gguf::parse(bytes).unwrap();
    let tensors = g.tensors.iter().map(|t| (t.name.clone(), t.dims.clone(), t.kind.code, g.raw(t).to_vec())).collect();
    (g.metadata.clone(), tensors)
}

