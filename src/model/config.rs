//! config.json → [`Config`]: the few numbers the forward pass needs, for GPT-2 and the Llama family
//! (llama, mistral, qwen2). Accepts both older (`torch_dtype`, top-level `rope_theta`) and newer
//! (`dtype`, `rope_parameters`) transformers spellings.

use serde_json::Value;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Arch {
    /// LayerNorm, learned positions, fused c_attn, GELU (tanh) MLP, Conv1D [in, out] weights.
    Gpt2,
    /// RMSNorm, RoPE, grouped-query attention, SwiGLU MLP, Linear [out, in] weights.
    Llama,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Config {
    pub arch: Arch,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub intermediate_size: usize,
    pub max_positions: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    /// q, k, v projections carry biases (qwen2; llama with attention_bias).
    pub qkv_bias: bool,
    /// o_proj carries a bias (llama with attention_bias).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// The ids generation stops at (EOS and end-of-turn tokens, none emitted): config.json's
    /// `eos_token_id` here; [`super::stop_ids`] adds generation_config.json's and the tokenizer's
    /// when the whole folder is read.
    pub stop_ids: Vec<u32>,
}

fn get_usize(v: &Value, key: &str) -> Result<usize, ModelError> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| ModelError::Config(format!("`{key}` is missing or not a whole number")))
}

fn get_f32(v: &Value, key: &str) -> Option<f32> {
    v.get(key).and_then(Value::as_f64).map(|x| x as f32)
}

/// A token id field as transformers writes it: a number, a list of numbers, or null/absent (no ids).
pub(crate) fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_u64).map(|x| x as u32).collect(),
        Some(v) => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn get_bool(v: &Value, key: &str) -> Option<bool> {
    v.get(key).and_then(Value::as_bool)
}

impl Config {
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("it is not valid JSON ({e})")))?;
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| ModelError::Config("`model_type` is missing".into()))?
            .to_string();
        let config = match model_type.as_str() {
            "gpt2" => Self::gpt2(&v, model_type)?,
            "llama" | "mistral" | "qwen2" => Self::llama(&v, model_type)?,
            _ => return Err(ModelError::UnsupportedModelType(model_type)),
        };
        config.validate()?;
        Ok(config)
    }

    fn gpt2(v: &Value, model_type: String) -> Result<Self, ModelError> {
        let hidden = get_usize(v, "n_embd")?;
        let act = v.get("activation_function").and_then(Value::as_str).unwrap_or("gelu_new");
        if !matches!(act, "gelu_new" | "gelu_pytorch_tanh") {
            return Err(ModelError::Config(format!(
                "activation_function `{act}` is not supported (only GPT-2's tanh GELU, gelu_new)"
            )));
        }
        let heads = get_usize(v, "n_head")?;
        Ok(Self {
            arch: Arch::Gpt2,
            model_type,
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size: hidden,
            num_layers: get_usize(v, "n_layer")?,
            num_heads: heads,
            num_kv_heads: heads,
            head_dim: if heads > 0 { hidden / heads } else { 0 },
            intermediate_size: v.get("n_inner").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(4 * hidden),
            max_positions: get_usize(v, "n_positions")?,
            norm_eps: get_f32(v, "layer_norm_epsilon").unwrap_or(1e-5),
            rope_theta: 0.0,
            tie_word_embeddings: get_bool(v, "tie_word_embeddings").unwrap_or(true),
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            stop_ids: token_ids(v.get("eos_token_id")),
        })
    }

    fn llama(v: &Value, model_type: String) -> Result<Self, ModelError> {
        let hidden = get_usize(v, "hidden_size")?;
        let heads = get_usize(v, "num_attention_heads")?;
        let act = v.get("hidden_act").and_then(Value::as_str).unwrap_or("silu");
        if act != "silu" {
            return Err(ModelError::Config(format!("hidden_act `{act}` is not supported (only silu)")));
        }
        let rope = v.get("rope_parameters").or_else(|| v.get("rope_scaling")).filter(|r| !r.is_null());
        if let Some(kind) = rope.and_then(|r| r.get("rope_type").or_else(|| r.get("type"))).and_then(Value::as_str) {
            if kind != "default" {
                return Err(ModelError::Config(format!(
                    "rope type `{kind}` is not supported (only the default RoPE, rope_scaling null)"
                )));
            }
        }
        let rope_theta = get_f32(v, "rope_theta")
            .or_else(|| rope.and_then(|r| get_f32(r, "rope_theta")))
            .unwrap_or(10000.0);
        let attention_bias = get_bool(v, "attention_bias").unwrap_or(false);
        Ok(Self {
            arch: Arch::Llama,
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size: hidden,
            num_layers: get_usize(v, "num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: v.get("num_key_value_heads").and_then(Value::as_u64).map(|x| x as usize).unwrap_or(heads),
            head_dim: v
                .get("head_dim")
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .unwrap_or(if heads > 0 { hidden / heads } else { 0 }),
            intermediate_size: get_usize(v, "intermediate_size")?,
            // Sliding-window attention (mistral) equals full causal attention while a sequence fits
            // the window, so the usable context is capped at the window rather than computed wrongly.
            max_positions: match v.get("sliding_window").and_then(Value::as_u64) {
                Some(w) if get_bool(v, "use_sliding_window") != Some(false) => {
                    get_usize(v, "max_position_embeddings")?.min(w as usize)
                }
                _ => get_usize(v, "max_position_embeddings")?,
            },
            norm_eps: get_f32(v, "rms_norm_eps").unwrap_or(1e-6),
            rope_theta,
            tie_word_embeddings: get_bool(v, "tie_word_embeddings").unwrap_or(false),
            qkv_bias: model_type == "qwen2" || attention_bias,
            o_bias: attention_bias,
            mlp_bias: get_bool(v, "mlp_bias").unwrap_or(false),
            stop_ids: token_ids(v.get("eos_token_id")),
            model_type,
        })
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_layers == 0 || self.num_heads == 0 {
            return bad("vocab_size, hidden size, layer count and head count must all be positive".into());
        }
        if self.num_kv_heads == 0 || self.num_heads % self.num_kv_heads != 0 {
            return bad(format!(
                "{} attention heads cannot be shared by {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.arch == Arch::Gpt2 && self.hidden_size % self.num_heads != 0 {
            return bad(format!("n_embd {} is not divisible by n_head {}", self.hidden_size, self.num_heads));
        }
        if self.arch == Arch::Llama && self.head_dim % 2 != 0 {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.max_positions == 0 {
            return bad("the context length must be positive".into());
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}

/// config.json for weights saved as f32 (a merged model): the same JSON with `dtype` /
/// `torch_dtype` set to float32, so transformers loads the saved tensors at their real precision.
pub fn config_json_f32(text: &str) -> Result<String, ModelError> {
    let mut config: Value = serde_json::from_str(text).map_err(|e| ModelError::Config(format!("it is not valid JSON ({e})")))?;
    for key in ["dtype", "torch_dtype"] {
        if config.get(key).is_some() {
            config[key] = "float32".into();
        }
    }
    Ok(serde_json::to_string_pretty(&config).expect("a JSON value serialises"))
}
