//! A llama GGUF → the files of a Hugging Face model folder: config.json, model.safetensors,
//! tokenizer.json, tokenizer_config.json, generation_config.json.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};

use super::{tokenizer, Gguf, GgufError, TensorInfo, Value};
use crate::model::{save_safetensors, save_safetensors_f16, Config, HostTensor, Model, Tokenizer, Weight, WeightFormat};

/// A converted model, before it is written out or loaded.
pub struct Imported {
    pub config: Json,
    /// HF names, torch shapes, each tensor in the format the file stores it in (repacked for the
    /// GPU: see `model::Weight`), q and k rows already in transformers' order.
    pub tensors: Vec<(String, Weight)>,
    pub tokenizer: Json,
    pub tokenizer_config: Json,
    pub generation_config: Json,
    /// How many tensors of each stored type the file had (e.g. "Q4_1" → 210).
    pub kinds: BTreeMap<&'static str, usize>,
    pub name: Option<String>,
}

impl Imported {
    pub fn num_params(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.len()).sum()
    }

    /// The model and its tokenizer, with every weight matrix kept in the file's format (a Q4_1
    /// tensor stays Q4_1 on the GPU); norms become f32.
    pub fn model(&self) -> Result<(Model, Tokenizer), GgufError> {
        let config = Config::from_json(&self.config.to_string())?;
        let mut model = Model::from_tensors(config, self.tensors.iter().cloned().collect())?;
        let tokenizer = Tokenizer::from_bytes(&serde_json::to_vec(&self.tokenizer).expect("JSON values serialize"))?
            .with_config(Some(self.tokenizer_config.clone()));
        model.set_stop_ids(&tokenizer, Some(&self.generation_config));
        Ok((model, tokenizer))
    }

    /// (file name, bytes) of the model folder; weights in f16 when `f16`, else f32.
    pub fn files(&self, f16: bool) -> Result<Vec<(&'static str, Vec<u8>)>, GgufError> {
        let tensors: Vec<(String, HostTensor)> = self.tensors.iter().map(|(n, w)| (n.clone(), w.to_f32())).collect();
        let weights = if f16 { save_safetensors_f16(&tensors)? } else { save_safetensors(&tensors)? };
        let mut files = self.folder_files(f16);
        files.push(("model.safetensors", weights));
        Ok(files)
    }

    /// The folder's files other than model.safetensors, its config.json saying f16 or f32 weights
    /// (also what `loratab merge` writes beside the merged f32 weights of a GGUF base).
    pub fn folder_files(&self, f16: bool) -> Vec<(&'static str, Vec<u8>)> {
        let mut config = self.config.clone();
        config["torch_dtype"] = if f16 { "float16" } else { "float32" }.into();
        let pretty = |v: &Json| serde_json::to_vec_pretty(v).expect("JSON values serialize");
        vec![
            ("config.json", pretty(&config)),
            ("generation_config.json", pretty(&self.generation_config)),
            ("tokenizer.json", serde_json::to_vec(&self.tokenizer).expect("JSON values serialize")),
            ("tokenizer_config.json", pretty(&self.tokenizer_config)),
        ]
    }
}

/// Metadata lookups that say which key is missing or mistyped.
pub(super) struct Meta<'a, 'b>(pub &'b Gguf<'a>);

impl Meta<'_, '_> {
    fn value(&self, key: &str) -> Result<&Value, GgufError> {
        self.0.get(key).ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn usize(&self, key: &str) -> Result<usize, GgufError> {
        self.opt_usize(key)?.ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => match v.as_int() {
                Some(x) if x >= 0 => Ok(Some(x as usize)),
                _ => Err(GgufError::KeyType { key: key.into(), expected: "a whole number" }),
            },
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        self.value(key)?.as_f32().ok_or_else(|| GgufError::KeyType { key: key.into(), expected: "a float" })
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        match self.0.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| GgufError::KeyType { key: key.into(), expected: "a string" }),
        }
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        self.opt_str(key)?.ok_or_else(|| GgufError::MissingKey(key.into()))
    }

    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.value(key)? {
            Value::Array(items) => Ok(items),
            _ => Err(GgufError::KeyType { key: key.into(), expected: "an array" }),
        }
    }
}

/// An f32 as JSON by its shortest decimal form, so 1e-5 stored as f32 reads back as 1e-5.
fn json_f32(x: f32) -> Json {
    json!(x.to_string().parse::<f64>().expect("a float's Display parses"))
}

/// Undo convert_hf_to_gguf.py's `permute` of q/k rows: within each head, GGUF row 2i + j is HF row
/// j·(head_dim/2) + i (llama.cpp's RoPE rotates adjacent pairs, HF's rotates the two halves).
/// Whole rows move, so a quantized weight is reordered without decoding it.
fn unpermute(w: &Weight, heads: usize) -> Weight {
    let head_rows = w.shape[0] / heads;
    let half = head_rows / 2;
    let mut order = vec![0; w.shape[0]];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                order[h * head_rows + j * half + i] = h * head_rows + 2 * i + j;
            }
        }
    }
    w.permute_rows(&order)
}

/// The format a ggml type is kept in on the GPU; None for types loratab does not decode.
fn weight_format(kind: &str) -> Option<WeightFormat> {
    Some(match kind {
        "F32" => WeightFormat::F32,
        "F16" => WeightFormat::F16,
        "BF16" => WeightFormat::Bf16,
        "Q8_0" => WeightFormat::Q8_0,
        "Q4_0" => WeightFormat::Q4_0,
        "Q4_1" => WeightFormat::Q4_1,
        _ => return None,
    })
}

/// llama.cpp's names → transformers' names: whole-model tensors, then the parts of `blk.N.`.
const TOP: [(&str, &str); 3] = [("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head")];
const BLOCK: [(&str, &str); 9] = [
    ("attn_norm", "input_layernorm"),
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// GGUF's llama tensor name → transformers' name; None for names a llama has no place for.
fn hf_name(name: &str, layers: usize) -> Option<String> {
    let base = name.strip_suffix(".weight")?;
    if let Some((_, hf)) = TOP.iter().find(|(g, _)| *g == base) {
        return Some(format!("{hf}.weight"));
    }
    let (layer, part) = base.strip_prefix("blk.")?.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < layers)?;
    let (_, hf) = BLOCK.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.weight"))
}

/// transformers' name → GGUF's (to name a missing tensor as the file would).
fn gguf_name(hf: &str) -> String {
    let base = hf.trim_end_matches(".weight");
    let (prefix, part, table) = match base.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
        Some((layer, part)) => (format!("blk.{layer}."), part, &BLOCK[..]),
        None => (String::new(), base, &TOP[..]),
    };
    let part = table.iter().find(|(_, h)| *h == part).map_or(part, |(g, _)| *g);
    format!("{prefix}{part}.weight")
}

/// Convert a llama GGUF file's bytes into a Hugging Face model (in memory).
pub fn import(bytes: &[u8]) -> Result<Imported, GgufError> {
    let g = Gguf::parse(bytes)?;
    let m = Meta(&g);
    let arch = m.str("general.architecture")?;
    if arch != "llama" {
        return Err(GgufError::Architecture(arch.into()));
    }
    let key = |k: &str| format!("llama.{k}");
    if m.opt_usize(&key("expert_count"))?.unwrap_or(0) > 0 {
        return Err(GgufError::Unsupported("a mixture-of-experts llama (llama.expert_count > 0)".into()));
    }
    if let Some(kind) = m.opt_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(GgufError::Unsupported(format!("RoPE scaling `{kind}`")));
        }
    }
    let layers = m.usize(&key("block_count"))?;
    let hidden = m.usize(&key("embedding_length"))?;
    let ffn = m.usize(&key("feed_forward_length"))?;
    let heads = m.usize(&key("attention.head_count"))?;
    let kv_heads = m.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || layers == 0 || hidden == 0 {
        return Err(GgufError::Unsupported(format!(
            "a llama with {layers} layers, hidden size {hidden}, {heads} heads and {kv_heads} key/value heads"
        )));
    }
    let head_dim = m.opt_usize(&key("attention.key_length"))?.unwrap_or(hidden / heads);
    for k in ["attention.value_length", "rope.dimension_count"] {
        if let Some(d) = m.opt_usize(&key(k))? {
            if d != head_dim {
                return Err(GgufError::Unsupported(format!("llama.{k} {d} differing from the head size {head_dim}")));
            }
        }
    }
    if head_dim == 0 || head_dim % 2 != 0 {
        return Err(GgufError::Unsupported(format!("head size {head_dim} (RoPE needs an even one)")));
    }
    let context = m.usize(&key("context_length"))?;
    let eps = m.f32(&key("attention.layer_norm_rms_epsilon"))?;
    let rope_theta = match g.get(&key("rope.freq_base")) {
        None => 10000.0,
        Some(_) => m.f32(&key("rope.freq_base"))?,
    };

    let find = |name: &str| g.tensors.iter().find(|t| t.name == name);
    let embd = find("token_embd.weight").ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?;
    let vocab = embd.shape()[0];
    if let Some(v) = m.opt_usize(&key("vocab_size"))? {
        if v != vocab {
            return Err(GgufError::Shape { name: "token_embd.weight".into(), expected: vec![v, hidden], found: embd.shape() });
        }
    }
    let tied = find("output.weight").is_none();
    let (q_dim, kv_dim) = (heads * head_dim, kv_heads * head_dim);
    let expected = |hf: &str| -> Vec<usize> {
        let part = hf.rsplit('.').nth(1).unwrap_or("");
        match part {
            "embed_tokens" | "lm_head" => vec![vocab, hidden],
            "q_proj" => vec![q_dim, hidden],
            "k_proj" | "v_proj" => vec![kv_dim, hidden],
            "o_proj" => vec![hidden, q_dim],
            "gate_proj" | "up_proj" => vec![ffn, hidden],
            "down_proj" => vec![hidden, ffn],
            _ => vec![hidden],
        }
    };

    let mut kinds = BTreeMap::new();
    let mut by_name = BTreeMap::new();
    for t in &g.tensors {
        let hf = hf_name(&t.name, layers).ok_or_else(|| GgufError::UnexpectedTensor(t.name.clone()))?;
        let shape = expected(&hf);
        if t.shape() != shape {
            return Err(GgufError::Shape { name: t.name.clone(), expected: shape, found: t.shape() });
        }
        *kinds.entry(t.kind.name).or_insert(0) += 1;
        by_name.insert(hf, t);
    }
    // Every tensor in transformers' order; the values are decoded only once all names are known good.
    let mut names = vec!["model.embed_tokens.weight".to_string()];
    for i in 0..layers {
        names.extend(BLOCK.iter().map(|(_, part)| format!("model.layers.{i}.{part}.weight")));
    }
    names.push("model.norm.weight".into());
    if !tied {
        names.push("lm_head.weight".into());
    }
    let mut tensors = Vec::with_capacity(names.len());
    for hf in names {
        let t: &TensorInfo = by_name.get(&hf).ok_or_else(|| GgufError::MissingTensor(gguf_name(&hf)))?;
        let format = weight_format(t.kind.name).ok_or_else(|| GgufError::UnsupportedType { name: t.name.clone(), kind: t.kind.name })?;
        let mut w = Weight::from_stored(format, &t.shape(), g.raw(t), &t.name)?;
        // Named as the file names it, and before `import-gguf` writes a folder from it.
        w.check_finite(&t.name)?;
        if hf.ends_with("q_proj.weight") {
            w = unpermute(&w, heads);
        } else if hf.ends_with("k_proj.weight") {
            w = unpermute(&w, kv_heads);
        }
        tensors.push((hf, w));
    }

    let ids = |k: &str| m.opt_usize(&format!("tokenizer.ggml.{k}"));
    let (bos, eos, pad) = (ids("bos_token_id")?, ids("eos_token_id")?, ids("padding_token_id")?);
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": context,
        "rms_norm_eps": json_f32(eps),
        "rope_theta": json_f32(rope_theta),
        "rope_scaling": null,
        "attention_bias": false,
        "mlp_bias": false,
        "tie_word_embeddings": tied,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "float32",
    });
    // llama.cpp's end-of-turn (and end-of-message) tokens stop generation too: transformers lists
    // every stop id in generation_config's eos_token_id.
    let mut stops: Vec<usize> = eos.into_iter().collect();
    for id in [ids("eot_token_id")?, ids("eom_token_id")?].into_iter().flatten() {
        if !stops.contains(&id) {
            stops.push(id);
        }
    }
    let stop_json = if stops.len() > 1 { json!(stops) } else { json!(eos) };
    let generation_config = json!({ "bos_token_id": bos, "eos_token_id": stop_json, "pad_token_id": pad });
    let (tokenizer, tokenizer_config) = tokenizer::convert(&m, vocab, context)?;
    // Whatever loads the folder later must be able to read this.
    Tokenizer::from_bytes(&serde_json::to_vec(&tokenizer).expect("JSON values serialize"))
        .map_err(|e| GgufError::Tokenizer(e.to_string()))?;
    Ok(Imported {
        config,
        tensors,
        tokenizer,
        tokenizer_config,
        generation_config,
        kinds,
        name: m.opt_str("general.name")?.map(String::from),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// convert_hf_to_gguf.py's permute, written out the way it is there (reshape/swapaxes), as the
    /// reference for `unpermute`.
    fn permute(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
        let half = w.len() / cols / heads / 2;
        // w.reshape(heads, 2, half, cols).swapaxes(1, 2) → (heads, half, 2, cols)
        let mut out = Vec::with_capacity(w.len());
        for h in 0..heads {
            for i in 0..half {
                for j in 0..2 {
                    let row = (h * 2 + j) * half + i;
                    out.extend_from_slice(&w[row * cols..(row + 1) * cols]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, head_dim, cols) = (3, 8, 5);
        let w: Vec<f32> = (0..heads * head_dim * cols).map(|x| x as f32).collect();
        let shape = vec![heads * head_dim, cols];
        let permuted = Weight::from_f32(&HostTensor::new(permute(&w, heads, cols), shape.clone()), WeightFormat::F32, "q").unwrap();
        assert_eq!(unpermute(&permuted, heads).to_f32().data, w);
        assert_ne!(permute(&w, heads, cols), w);
    }

    #[test]
    fn names_map_both_ways() {
        for name in ["token_embd.weight", "output.weight", "output_norm.weight", "blk.3.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.ffn_norm.weight"] {
            let hf = hf_name(name, 4).unwrap();
            assert_eq!(gguf_name(&hf), name);
        }
        assert_eq!(hf_name("blk.4.attn_q.weight", 4), None);
        assert_eq!(hf_name("rope_freqs.weight", 4), None);
        assert_eq!(hf_name("blk.0.attn_q.bias", 4), None);
    }
}
