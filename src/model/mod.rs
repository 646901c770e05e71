//! Models as Hugging Face saves them: `config.json` + `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`) + `tokenizer.json`, read into one architecture-neutral [`Model`]
//! of f32 host tensors. The CPU reference forward (`reference::model`) and the GPU forward
//! (`gpu::model`) both read this structure top to bottom.

pub(crate) mod block;
pub use block::Branch;
mod config;
mod decode;
mod forward;
mod load;
mod tokenizer;
mod weight;
pub mod default;

pub use config::{config_json_f32, Arch, Config};
pub(crate) use forward::heads;
pub use decode::{PendingStep, Pick, Picked, StepInput};
pub use forward::{GpuBlock, GpuLinear, GpuMlp, GpuModel, GpuNorm, RowParts};
pub use load::{load_safetensors, load_weights, save_safetensors, save_safetensors_f16, ModelFiles};
pub(crate) use load::serialize_views;
pub use tokenizer::{Tokenizer, END_OF_TURN};
pub use weight::{Weight, WeightFormat};

use crate::gpu::GpuError;

/// What can be wrong with a model folder, as a sentence saying what and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path} is missing: a model folder needs config.json, model.safetensors (or its shards and model.safetensors.index.json) and tokenizer.json")]
    MissingFile { path: String },
    #[error("could not read {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("config.json is not usable: {0}")]
    Config(String),
    #[error("model_type `{0}` is not supported: loratab runs gpt2, llama, mistral and qwen2 models")]
    UnsupportedModelType(String),
    #[error("{file} is not a valid safetensors file ({reason}); it may be truncated or corrupted: download it again")]
    Safetensors { file: String, reason: String },
    #[error("tensor `{name}` contains NaN or infinite values: the file is corrupted or the model diverged when it was trained; use another copy of the model")]
    NonFinite { name: String },
    #[error("tensor `{name}` cannot be kept in that format: {detail}")]
    Format { name: String, detail: String },
    #[error("tensor `{name}` is stored as {dtype}; loratab reads F32, F16 and BF16 weights")]
    UnsupportedDtype { name: String, dtype: String },
    #[error("tensor `{name}` is missing from the weights: the files do not match config.json ({model_type})")]
    MissingTensor { name: String, model_type: String },
    #[error("tensor `{name}` has shape {found:?} but config.json implies {expected:?}: the weights and config.json do not belong together")]
    ShapeMismatch { name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{file} is not usable: {reason}")]
    Json { file: String, reason: String },
    #[error("tokenizer.json is not usable: {0}")]
    Tokenizer(String),
    #[error("the tokenizer knows {tokenizer} tokens but the model's embedding has only {model} rows: tokenizer.json does not belong to this model")]
    VocabMismatch { tokenizer: usize, model: usize },
    #[error("the text is empty: give at least two tokens of text")]
    EmptyText,
    #[error("token id {id} is outside the model's vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("{tokens} tokens do not fit the model's context of {max} positions")]
    TooLong { tokens: usize, max: usize },
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// An f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl HostTensor {
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Self { data, shape }
    }
}

/// How a linear layer's weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// torch.nn.Linear: W [out, in], y = x·Wᵀ (Llama family).
    OutIn,
    /// GPT-2's Conv1D: W [in, out], y = x·W.
    InOut,
}

#[derive(Debug, Clone)]
pub struct Linear {
    /// In its storage format (f16 stays f16, a Q4_1 GGUF tensor stays Q4_1): the GPU keeps it so.
    pub weight: Weight,
    pub bias: Option<HostTensor>,
    pub in_dim: usize,
    pub out_dim: usize,
    pub layout: WeightLayout,
}

#[derive(Debug, Clone)]
pub struct Norm {
    pub weight: HostTensor,
    /// LayerNorm has a bias; RMSNorm has none.
    pub bias: Option<HostTensor>,
}

#[derive(Debug, Clone)]
pub enum Mlp {
    /// GPT-2: proj(gelu(fc(x))).
    Gelu { fc: Linear, proj: Linear },
    /// Llama: down(silu(gate(x)) · up(x)).
    SwiGlu { gate: Linear, up: Linear, down: Linear },
}

#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    /// GPT-2's fused c_attn is split into q, k, v at load time (column slices of [in, 3·out]).
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub config: Config,
    /// [vocab, hidden], in its storage format like the linear weights.
    pub token_embedding: Weight,
    /// GPT-2's learned positions [max_positions, hidden].
    pub position_embedding: Option<HostTensor>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// None: tied to the token embedding (logits = h·Eᵀ).
    pub lm_head: Option<Linear>,
}

/// The frozen matrices of a model with names for messages, by shared or mutable reference (`$m`
/// is `mut` or nothing): one list for both.
macro_rules! frozen_matrices {
    ($model:ident, $($m:ident)?) => {{
        let mut out = vec![("embed_tokens.weight".to_string(), &$($m)? $model.token_embedding)];
        for (i, b) in (&$($m)? $model.blocks).into_iter().enumerate() {
            let mlp = match &$($m)? b.mlp {
                Mlp::Gelu { fc, proj } => vec![("fc", fc), ("proj", proj)],
                Mlp::SwiGlu { gate, up, down } => vec![("gate_proj", gate), ("up_proj", up), ("down_proj", down)],
            };
            let attn = [("q_proj", &$($m)? b.q), ("k_proj", &$($m)? b.k), ("v_proj", &$($m)? b.v), ("o_proj", &$($m)? b.o)];
            for (name, l) in attn.into_iter().chain(mlp) {
                out.push((format!("layers.{i}.{name}.weight"), &$($m)? l.weight));
            }
        }
        if let Some(h) = &$($m)? $model.lm_head {
            out.push(("lm_head.weight".to_string(), &$($m)? h.weight));
        }
        out
    }};
}

impl Model {
    pub fn num_params(&self) -> usize {
        let lin = |l: &Linear| l.weight.len() + l.bias.as_ref().map_or(0, |b| b.data.len());
        let norm = |n: &Norm| n.weight.data.len() + n.bias.as_ref().map_or(0, |b| b.data.len());
        let mut n = self.token_embedding.len()
            + self.position_embedding.as_ref().map_or(0, |p| p.data.len())
            + norm(&self.final_norm)
            + self.lm_head.as_ref().map_or(0, lin);
        for b in &self.blocks {
            n += norm(&b.attn_norm) + norm(&b.mlp_norm) + lin(&b.q) + lin(&b.k) + lin(&b.v) + lin(&b.o);
            n += match &b.mlp {
                Mlp::Gelu { fc, proj } => lin(fc) + lin(proj),
                Mlp::SwiGlu { gate, up, down } => lin(gate) + lin(up) + lin(down),
            };
        }
        n
    }

    /// Every frozen matrix (token embedding, linear weights) with a name for messages.
    fn matrices_mut(&mut self) -> Vec<(String, &mut Weight)> {
        frozen_matrices!(self, mut)
    }

    fn matrices(&self) -> Vec<(String, &Weight)> {
        frozen_matrices!(self,)
    }

    /// Keep every frozen matrix in `format` (`--base-dtype`: quantize or widen at load, like
    /// `load_in_8bit`/`load_in_4bit`); norms, biases and positions stay f32.
    pub fn convert_weights(&mut self, format: WeightFormat) -> Result<(), ModelError> {
        for (name, w) in self.matrices_mut() {
            *w = w.convert(format, &name)?;
        }
        Ok(())
    }

    /// The frozen matrices' formats and how many of each (e.g. "q4_1 ×210, q8_0 ×1").
    pub fn weight_formats(&self) -> std::collections::BTreeMap<WeightFormat, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (_, w) in self.matrices() {
            *counts.entry(w.format).or_insert(0) += 1;
        }
        counts
    }

    /// Check token ids against the vocabulary before they reach a GPU kernel.
    pub fn check_tokens(&self, tokens: &[u32]) -> Result<(), ModelError> {
        match tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            Some(&id) => Err(ModelError::TokenOutOfRange { id, vocab: self.config.vocab_size }),
            None => Ok(()),
        }
    }
}
