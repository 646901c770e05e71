//! loratab: LoRA fine-tuning of small transformers on the user's GPU, in WGSL via wgpu,
//! natively (CLI) and in the browser (Leptos app). See README.md and DEVELOPERS.md.

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod eval;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod lora;
pub mod model;
pub mod ops;
pub mod reference;
pub mod rng;
pub mod selftest;
pub mod studio;
pub mod train;
pub mod zip;

#[cfg(target_arch = "wasm32")]
pub mod web;
