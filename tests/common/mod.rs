//! One GPU test suite, two harnesses: each `gpu_test!` body runs natively under `cargo test`
//! (Vulkan/Metal/DX12, Mesa lavapipe on CI) and in headless Chromium's WebGPU under
//! wasm-bindgen-test (`cargo test --target wasm32-unknown-unknown`, see ./dev).

#![allow(dead_code)]

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
    }
}
