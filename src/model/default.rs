//! The embedded default model: `models/austen-5m/` (a 5.4M-parameter Llama pretrained on Jane
//! Austen's novels by `tools/pretrain.py`; provenance in `models/austen-5m/provenance.json`).
//! The native binary carries its three files, so `loratab train --text FILE` needs no download;
//! the web app gets the same files from its own origin (Trunk copies the folder next to the page).

#[cfg(not(target_arch = "wasm32"))]
use super::ModelFiles;

pub const NAME: &str = "austen-5m";

/// Where the folder sits in the repository (and `base_model_name_or_path` of adapters trained on it).
pub const PATH: &str = "models/austen-5m";

/// The folder's files, in the order the web app fetches them.
pub const FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// The default model's files, compiled into the native binary.
#[cfg(not(target_arch = "wasm32"))]
pub fn files() -> ModelFiles {
    ModelFiles {
        config: include_str!("../../models/austen-5m/config.json").to_string(),
        weights: vec![("model.safetensors".into(), include_bytes!("../../models/austen-5m/model.safetensors").to_vec())],
        tokenizer: include_bytes!("../../models/austen-5m/tokenizer.json").to_vec(),
        generation_config: None,
        tokenizer_config: None,
    }
}
