//! Reading a model folder: files → bytes ([`ModelFiles`], also what the browser gets from a drop) →
//! named f32 tensors → [`Model`], checking every shape against config.json.

use std::collections::HashMap;

use super::*;

/// The raw files of a model folder.
#[derive(Clone, Default)]
pub struct ModelFiles {
    pub config: String,
    /// (file name, bytes) of model.safetensors or of every shard.
    pub weights: Vec<(String, Vec<u8>)>,
    pub tokenizer: Vec<u8>,
    /// generation_config.json (its `eos_token_id`: where generation stops), when the folder has one.
    pub generation_config: Option<String>,
    /// tokenizer_config.json (the chat template and the EOS token), when the folder has one.
    pub tokenizer_config: Option<String>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ModelFiles {
    /// Read `dir`: config.json, tokenizer.json, and model.safetensors or the shards that
    /// model.safetensors.index.json lists.
    pub fn read_dir(dir: &std::path::Path) -> Result<Self, ModelError> {
        let read = |name: &str| -> Result<Vec<u8>, ModelError> {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => ModelError::MissingFile { path: path.display().to_string() },
                _ => ModelError::Io { path: path.display().to_string(), reason: e.to_string() },
            })
        };
        let config = String::from_utf8(read("config.json")?)
            .map_err(|_| ModelError::Config("it is not UTF-8 text".into()))?;
        let tokenizer = read("tokenizer.json")?;
        let optional = |name: &str| -> Result<Option<String>, ModelError> {
            if !dir.join(name).exists() {
                return Ok(None);
            }
            String::from_utf8(read(name)?).map(Some).map_err(|_| ModelError::Json { file: name.into(), reason: "it is not UTF-8 text".into() })
        };
        let (generation_config, tokenizer_config) = (optional("generation_config.json")?, optional("tokenizer_config.json")?);
        let mut weights = Vec::new();
        if dir.join("model.safetensors").exists() || !dir.join("model.safetensors.index.json").exists() {
            weights.push(("model.safetensors".to_string(), read("model.safetensors")?));
        } else {
            let index: serde_json::Value = serde_json::from_slice(&read("model.safetensors.index.json")?)
                .map_err(|e| ModelError::Safetensors {
                    file: "model.safetensors.index.json".into(),
                    reason: e.to_string(),
                })?;
            let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| {
                ModelError::Safetensors {
                    file: "model.safetensors.index.json".into(),
                    reason: "it has no weight_map".into(),
                }
            })?;
            let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.sort();
            shards.dedup();
            for shard in shards {
                if shard.contains('/') || shard.contains("..") {
                    return Err(ModelError::Safetensors {
                        file: "model.safetensors.index.json".into(),
                        reason: format!("shard name `{shard}` points outside the folder"),
                    });
                }
                weights.push((shard.to_string(), read(shard)?));
            }
        }
        Ok(Self { config, weights, tokenizer, generation_config, tokenizer_config })
    }
}

/// Every tensor of one safetensors file in its stored format: F16 and BF16 stay 16-bit (the GPU
/// keeps frozen weights so), F32 and integer tensors (token ids in golden files, GPT-2's old
/// causal-mask buffers) become f32.
pub fn load_weights(file: &str, bytes: &[u8]) -> Result<HashMap<String, Weight>, ModelError> {
    use safetensors::Dtype;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| ModelError::Safetensors { file: file.to_string(), reason: e.to_string() })?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let (data, shape) = (view.data(), view.shape());
        let ints = |width: usize, int: fn(&[u8]) -> f32| {
            HostTensor::new(data.chunks_exact(width).map(int).collect(), shape.to_vec())
        };
        let weight = match view.dtype() {
            Dtype::F32 => Weight::from_stored(WeightFormat::F32, shape, data, &name)?,
            Dtype::F16 => Weight::from_stored(WeightFormat::F16, shape, data, &name)?,
            Dtype::BF16 => Weight::from_stored(WeightFormat::Bf16, shape, data, &name)?,
            Dtype::I64 => Weight::from_f32(&ints(8, |c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32), WeightFormat::F32, &name)?,
            Dtype::I32 => Weight::from_f32(&ints(4, |c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as f32), WeightFormat::F32, &name)?,
            other => return Err(ModelError::UnsupportedDtype { name, dtype: format!("{other:?}") }),
        };
        out.insert(name, weight);
    }
    Ok(out)
}

/// Every tensor of one safetensors file, converted to f32.
pub fn load_safetensors(file: &str, bytes: &[u8]) -> Result<HashMap<String, HostTensor>, ModelError> {
    Ok(load_weights(file, bytes)?.into_iter().map(|(name, w)| (name, w.to_f32())).collect())
}

/// Named tensors, taken one by one with the shape config.json implies.
struct Tensors {
    map: HashMap<String, Weight>,
    prefixes: &'static [&'static str],
    model_type: String,
}

impl Tensors {
    fn find(&self, name: &str) -> Option<String> {
        self.prefixes.iter().map(|p| format!("{p}{name}")).find(|k| self.map.contains_key(k))
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<Weight, ModelError> {
        let key = self.find(name).ok_or_else(|| ModelError::MissingTensor {
            name: format!("{}{name}", self.prefixes[0]),
            model_type: self.model_type.clone(),
        })?;
        let t = self.map.remove(&key).expect("found above");
        if t.shape != shape {
            return Err(ModelError::ShapeMismatch { name: key, expected: shape.to_vec(), found: t.shape });
        }
        // Only the tensors the model uses: an unused buffer may hold −∞ on purpose (old causal masks).
        t.check_finite(&key)?;
        Ok(t)
    }

    fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Weight>, ModelError> {
        if self.find(name).is_some() { self.take(name, shape).map(Some) } else { Ok(None) }
    }

    /// A vector (norm weight, bias) or position table: always f32 on the host and the GPU.
    fn take_f32(&mut self, name: &str, shape: &[usize]) -> Result<HostTensor, ModelError> {
        Ok(self.take(name, shape)?.to_f32())
    }

    fn norm(&mut self, name: &str, dim: usize, with_bias: bool) -> Result<Norm, ModelError> {
        Ok(Norm {
            weight: self.take_f32(&format!("{name}.weight"), &[dim])?,
            bias: if with_bias { Some(self.take_f32(&format!("{name}.bias"), &[dim])?) } else { None },
        })
    }

    /// A torch.nn.Linear: weight [out, in].
    fn linear(&mut self, name: &str, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: self.take(&format!("{name}.weight"), &[out_dim, in_dim])?,
            bias: if bias { Some(self.take_f32(&format!("{name}.bias"), &[out_dim])?) } else { None },
            in_dim,
            out_dim,
            layout: WeightLayout::OutIn,
        })
    }

    /// GPT-2's Conv1D: weight [in, out], always with a bias.
    fn conv1d(&mut self, name: &str, in_dim: usize, out_dim: usize) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: self.take(&format!("{name}.weight"), &[in_dim, out_dim])?,
            bias: Some(self.take_f32(&format!("{name}.bias"), &[out_dim])?),
            in_dim,
            out_dim,
            layout: WeightLayout::InOut,
        })
    }
}

/// Split GPT-2's fused c_attn (weight [in, 3·d], bias [3·d]) into q, k, v Conv1D layers, each in
/// the fused weight's format (column slices of a 16-bit weight repack exactly).
fn split_c_attn(fused: Linear, d: usize) -> Result<[Linear; 3], ModelError> {
    let in_dim = fused.in_dim;
    let bias = fused.bias.expect("c_attn has a bias");
    let all = fused.weight.to_f32();
    let parts: Vec<Weight> = (0..3)
        .map(|part| {
            let mut w = Vec::with_capacity(in_dim * d);
            for row in all.data.chunks(3 * d) {
                w.extend_from_slice(&row[part * d..(part + 1) * d]);
            }
            Weight::from_f32(&HostTensor::new(w, vec![in_dim, d]), fused.weight.format, "attn.c_attn.weight")
        })
        .collect::<Result<_, _>>()?;
    let mut parts = parts.into_iter();
    Ok(std::array::from_fn(|part| {
        Linear {
            weight: parts.next().expect("three parts"),
            bias: Some(HostTensor::new(bias.data[part * d..(part + 1) * d].to_vec(), vec![d])),
            in_dim,
            out_dim: d,
            layout: WeightLayout::InOut,
        }
    }))
}

impl Model {
    /// Build the model from its files and check the tokenizer against it.
    pub fn from_files(files: &ModelFiles) -> Result<(Model, Tokenizer), ModelError> {
        let config = Config::from_json(&files.config)?;
        let mut map = HashMap::new();
        for (name, bytes) in &files.weights {
            map.extend(load_weights(name, bytes)?);
        }
        let mut model = Self::from_tensors(config, map)?;
        let tokenizer = Tokenizer::from_bytes(&files.tokenizer)?;
        if tokenizer.vocab_size() > model.config.vocab_size {
            return Err(ModelError::VocabMismatch {
                tokenizer: tokenizer.vocab_size(),
                model: model.config.vocab_size,
            });
        }
        let json = |file: &str, text: &Option<String>| -> Result<Option<serde_json::Value>, ModelError> {
            text.as_deref().map(|t| serde_json::from_str(t).map_err(|e| ModelError::Json { file: file.into(), reason: e.to_string() })).transpose()
        };
        let generation = json("generation_config.json", &files.generation_config)?;
        let tokenizer = tokenizer.with_config(json("tokenizer_config.json", &files.tokenizer_config)?);
        model.set_stop_ids(&tokenizer, generation.as_ref());
        Ok((model, tokenizer))
    }

    /// [`Config::stop_ids`] from the whole folder: generation_config.json's `eos_token_id` (when it
    /// has one; else config.json's) with the tokenizer's EOS and end-of-turn tokens
    /// ([`Tokenizer::stop_ids`]).
    pub fn set_stop_ids(&mut self, tokenizer: &Tokenizer, generation_config: Option<&serde_json::Value>) {
        let generation = super::config::token_ids(generation_config.and_then(|g| g.get("eos_token_id")));
        let eos = if generation.is_empty() { &self.config.stop_ids } else { &generation };
        self.config.stop_ids = tokenizer.stop_ids(eos).into_iter().filter(|&id| (id as usize) < self.config.vocab_size).collect();
    }

    /// Read a model folder from disk.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(dir: &std::path::Path) -> Result<(Model, Tokenizer), ModelError> {
        Self::from_files(&ModelFiles::read_dir(dir)?)
    }

    /// Arrange named tensors (as transformers names them) into the model, checking every shape.
    pub fn from_tensors(config: Config, map: HashMap<String, Weight>) -> Result<Model, ModelError> {
        let c = &config;
        let (d, v, f) = (c.hidden_size, c.vocab_size, c.intermediate_size);
        match c.arch {
            Arch::Gpt2 => {
                // GPT2LMHeadModel prefixes "transformer."; a bare GPT2Model (the original gpt2 files) does not.
                let mut t = Tensors { map, prefixes: &["transformer.", ""], model_type: c.model_type.clone() };
                let token_embedding = t.take("wte.weight", &[v, d])?;
                let position_embedding = Some(t.take_f32("wpe.weight", &[c.max_positions, d])?);
                let mut blocks = Vec::new();
                for i in 0..c.num_layers {
                    let p = format!("h.{i}");
                    let [q, k, vv] = split_c_attn(t.conv1d(&format!("{p}.attn.c_attn"), d, 3 * d)?, d)?;
                    blocks.push(Block {
                        attn_norm: t.norm(&format!("{p}.ln_1"), d, true)?,
                        q,
                        k,
                        v: vv,
                        o: t.conv1d(&format!("{p}.attn.c_proj"), d, d)?,
                        mlp_norm: t.norm(&format!("{p}.ln_2"), d, true)?,
                        mlp: Mlp::Gelu {
                            fc: t.conv1d(&format!("{p}.mlp.c_fc"), d, f)?,
                            proj: t.conv1d(&format!("{p}.mlp.c_proj"), f, d)?,
                        },
                    });
                }
                let final_norm = t.norm("ln_f", d, true)?;
                t.prefixes = &[""];
                let lm_head = if c.tie_word_embeddings { None } else { Some(t.linear("lm_head", d, v, false)?) };
                Ok(Model { config, token_embedding, position_embedding, blocks, final_norm, lm_head })
            }
            Arch::Llama => {
                let mut t = Tensors { map, prefixes: &["model.", ""], model_type: c.model_type.clone() };
                let token_embedding = t.take("embed_tokens.weight", &[v, d])?;
                let (qd, kvd) = (c.q_dim(), c.kv_dim());
                let mut blocks = Vec::new();
                for i in 0..c.num_layers {
                    let p = format!("layers.{i}");
                    blocks.push(Block {
                        attn_norm: t.norm(&format!("{p}.input_layernorm"), d, false)?,
                        q: t.linear(&format!("{p}.self_attn.q_proj"), d, qd, c.qkv_bias)?,
                        k: t.linear(&format!("{p}.self_attn.k_proj"), d, kvd, c.qkv_bias)?,
                        v: t.linear(&format!("{p}.self_attn.v_proj"), d, kvd, c.qkv_bias)?,
                        o: t.linear(&format!("{p}.self_attn.o_proj"), qd, d, c.o_bias)?,
                        mlp_norm: t.norm(&format!("{p}.post_attention_layernorm"), d, false)?,
                        mlp: Mlp::SwiGlu {
                            gate: t.linear(&format!("{p}.mlp.gate_proj"), d, f, c.mlp_bias)?,
                            up: t.linear(&format!("{p}.mlp.up_proj"), d, f, c.mlp_bias)?,
                            down: t.linear(&format!("{p}.mlp.down_proj"), f, d, c.mlp_bias)?,
                        },
                    });
                }
                let final_norm = t.norm("norm", d, false)?;
                t.prefixes = &[""];
                // Tied checkpoints usually omit lm_head.weight; some store a copy anyway.
                let lm_head = match t.take_opt("lm_head.weight", &[v, d])? {
                    Some(w) if !c.tie_word_embeddings => Some(Linear {
                        weight: w,
                        bias: None,
                        in_dim: d,
                        out_dim: v,
                        layout: WeightLayout::OutIn,
                    }),
                    Some(_) => None,
                    None if c.tie_word_embeddings => None,
                    None => {
                        return Err(ModelError::MissingTensor {
                            name: "lm_head.weight".into(),
                            model_type: c.model_type.clone(),
                        })
                    }
                };
                Ok(Model { config, token_embedding, position_embedding: None, blocks, final_norm, lm_head })
            }
        }
    }
}

impl Model {
    /// The weights as transformers names and lays them out (GPT-2's q, k, v fused back into c_attn),
    /// f32: what a merged model folder's model.safetensors holds.
    pub fn to_tensors(&self) -> Vec<(String, HostTensor)> {
        let c = &self.config;
        let mut out = Vec::new();
        let mut put = |name: String, t: &HostTensor| out.push((name, t.clone()));
        fn linear(put: &mut dyn FnMut(String, &HostTensor), name: &str, l: &Linear) {
            put(format!("{name}.weight"), &l.weight.to_f32());
            if let Some(b) = &l.bias {
                put(format!("{name}.bias"), b);
            }
        }
        let norm = |put: &mut dyn FnMut(String, &HostTensor), name: &str, n: &Norm| {
            put(format!("{name}.weight"), &n.weight);
            if let Some(b) = &n.bias {
                put(format!("{name}.bias"), b);
            }
        };
        match c.arch {
            Arch::Gpt2 => {
                put("transformer.wte.weight".into(), &self.token_embedding.to_f32());
                if let Some(p) = &self.position_embedding {
                    put("transformer.wpe.weight".into(), p);
                }
                for (i, b) in self.blocks.iter().enumerate() {
                    let p = format!("transformer.h.{i}");
                    norm(&mut put, &format!("{p}.ln_1"), &b.attn_norm);
                    // Re-fuse q, k, v ([in, d] each) into c_attn [in, 3d].
                    let (d_in, d) = (b.q.in_dim, b.q.out_dim);
                    let qkv = [&b.q, &b.k, &b.v].map(|l| l.weight.to_f32().data);
                    let mut w = Vec::with_capacity(d_in * 3 * d);
                    for row in 0..d_in {
                        for part in &qkv {
                            w.extend_from_slice(&part[row * d..(row + 1) * d]);
                        }
                    }
                    let bias: Vec<f32> = [&b.q, &b.k, &b.v]
                        .iter()
                        .flat_map(|l| l.bias.as_ref().map(|x| x.data.clone()).unwrap_or(vec![0.0; d]))
                        .collect();
                    put(format!("{p}.attn.c_attn.weight"), &HostTensor::new(w, vec![d_in, 3 * d]));
                    put(format!("{p}.attn.c_attn.bias"), &HostTensor::new(bias, vec![3 * d]));
                    linear(&mut put, &format!("{p}.attn.c_proj"), &b.o);
                    norm(&mut put, &format!("{p}.ln_2"), &b.mlp_norm);
                    if let Mlp::Gelu { fc, proj } = &b.mlp {
                        linear(&mut put, &format!("{p}.mlp.c_fc"), fc);
                        linear(&mut put, &format!("{p}.mlp.c_proj"), proj);
                    }
                }
                norm(&mut put, "transformer.ln_f", &self.final_norm);
            }
            Arch::Llama => {
                put("model.embed_tokens.weight".into(), &self.token_embedding.to_f32());
                for (i, b) in self.blocks.iter().enumerate() {
                    let p = format!("model.layers.{i}");
                    norm(&mut put, &format!("{p}.input_layernorm"), &b.attn_norm);
                    linear(&mut put, &format!("{p}.self_attn.q_proj"), &b.q);
                    linear(&mut put, &format!("{p}.self_attn.k_proj"), &b.k);
                    linear(&mut put, &format!("{p}.self_attn.v_proj"), &b.v);
                    linear(&mut put, &format!("{p}.self_attn.o_proj"), &b.o);
                    norm(&mut put, &format!("{p}.post_attention_layernorm"), &b.mlp_norm);
                    if let Mlp::SwiGlu { gate, up, down } = &b.mlp {
                        linear(&mut put, &format!("{p}.mlp.gate_proj"), gate);
                        linear(&mut put, &format!("{p}.mlp.up_proj"), up);
                        linear(&mut put, &format!("{p}.mlp.down_proj"), down);
                    }
                }
                norm(&mut put, "model.norm", &self.final_norm);
            }
        }
        if let Some(head) = &self.lm_head {
            linear(&mut put, "lm_head", head);
        }
        out
    }
}

/// A safetensors file of f32 tensors (the format transformers reads).
pub fn save_safetensors(tensors: &[(String, HostTensor)]) -> Result<Vec<u8>, ModelError> {
    serialize(tensors, safetensors::Dtype::F32, |data| bytemuck::cast_slice(data).to_vec())
}

/// The same in f16 (half the size; values beyond ±65504 become infinite).
pub fn save_safetensors_f16(tensors: &[(String, HostTensor)]) -> Result<Vec<u8>, ModelError> {
    serialize(tensors, safetensors::Dtype::F16, |data| {
        data.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect()
    })
}

fn serialize(
    tensors: &[(String, HostTensor)],
    dtype: safetensors::Dtype,
    encode: impl Fn(&[f32]) -> Vec<u8>,
) -> Result<Vec<u8>, ModelError> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, t)| encode(&t.data)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, t), b)| {
            safetensors::tensor::TensorView::new(dtype, t.shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| ModelError::Safetensors { file: "model.safetensors".into(), reason: e.to_string() })
        })
        .collect::<Result<Vec<_>, _>>()?;
    serialize_views(views, &[("format", "pt")]).map_err(|reason| ModelError::Safetensors { file: "model.safetensors".into(), reason })
}

/// `safetensors::serialize` with the same bytes for the same tensors every time: the crate writes
/// the metadata from a HashMap, whose order changes from one map to the next, so the header is
/// rewritten with its keys sorted (same JSON, same length). A saved adapter or training state
/// loaded back and saved again is then byte for byte the file it came from.
pub(crate) fn serialize_views<V: safetensors::View>(views: Vec<(String, V)>, meta: &[(&str, &str)]) -> Result<Vec<u8>, String> {
    let meta: HashMap<String, String> = meta.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let mut bytes = safetensors::serialize(views, Some(meta)).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| e.to_string())?;
    let sorted = |v: &serde_json::Value| -> std::collections::BTreeMap<String, serde_json::Value> {
        v.as_object().map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    };
    let header: std::collections::BTreeMap<&String, _> = header.iter().map(|(k, v)| (k, sorted(v))).collect();
    let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    // The crate pads its compact JSON with spaces; ours is the same JSON reordered, so it fits.
    if json.len() > n {
        return Err(format!("the sorted header ({} bytes) outgrew the written one ({n})", json.len()));
    }
    bytes[8..8 + json.len()].copy_from_slice(&json);
    bytes[8 + json.len()..8 + n].fill(b' ');
    Ok(bytes)
}
