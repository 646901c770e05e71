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
