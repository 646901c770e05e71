//! LoRA adapters in Hugging Face PEFT's format: `adapter_config.json` + `adapter_model.safetensors`
//! with keys `base_model.model.<module>.lora_A.weight` (A [r, in]) and `…lora_B.weight` (B [out, r]).
//! ΔW = s·B·A with s = α/r (α/√r with rsLoRA), per-module r and α from `rank_pattern`/`alpha_pattern`.
//!
//! GPT-2's fused `c_attn` (q, k, v in one Conv1D [in, 3d]) takes one adapter whose B [3d, r] covers
//! the three projections; loratab's model splits c_attn into q, k, v, so B's rows are split the same way.

mod options;
mod site;

pub use options::{Init, LoraOptions, Target};
pub use site::{module_sites, Site};

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use crate::model::{load_safetensors, save_safetensors, HostTensor, Linear, Model, Weight, WeightFormat, WeightLayout};

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("{path} is missing: an adapter folder needs adapter_config.json and adapter_model.safetensors")]
    MissingFile { path: String },
    #[error("adapter_config.json is not usable: {0}")]
    Config(String),
    /// Settings for a new adapter that cannot work (rank 0, an unknown target, …).
    #[error("{0}")]
    Options(String),
    #[error("adapter_model.safetensors is not usable: {0}")]
    Weights(String),
    #[error("the adapter targets `{module}`, which this {model_type} model does not have: the adapter was trained on another base model")]
    UnknownModule { module: String, model_type: String },
    #[error("the adapter for `{module}` has {found:?} but the base model needs {expected:?}: the adapter was trained on another base model")]
    Shape { module: String, expected: Vec<usize>, found: Vec<usize> },
}

/// The subset of PEFT's LoraConfig that defines the adapter's math.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub lora_alpha: f32,
    pub use_rslora: bool,
    pub target_modules: Vec<String>,
    pub rank_pattern: BTreeMap<String, usize>,
    pub alpha_pattern: BTreeMap<String, f32>,
    pub fan_in_fan_out: bool,
    /// PEFT's dropout on the adapter input while training (0: off).
    pub lora_dropout: f32,
    pub base_model_name_or_path: Option<String>,
}

/// PEFT matches a pattern key against a module path by its trailing dotted components.
fn pattern_matches(key: &str, module: &str) -> bool {
    module == key || module.ends_with(&format!(".{key}"))
}

impl LoraConfig {
    pub fn from_json(text: &str) -> Result<Self, LoraError> {
        let v: Value = serde_json::from_str(text).map_err(|e| LoraError::Config(format!("not valid JSON ({e})")))?;
        let peft_type = v.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
        if peft_type != "LORA" {
            return Err(LoraError::Config(format!("peft_type is {peft_type}; loratab reads LORA adapters")));
        }
        for flag in ["use_dora", "lora_bias"] {
            if v.get(flag).and_then(Value::as_bool) == Some(true) {
                return Err(LoraError::Config(format!("{flag} is set; loratab supports plain LoRA only")));
            }
        }
        let r = v.get("r").and_then(Value::as_u64).filter(|&r| r > 0).ok_or_else(|| LoraError::Config("`r` is missing or not a positive whole number".into()))? as usize;
        let target_modules = match v.get("target_modules") {
            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(String::from)).collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => return Err(LoraError::Config("`target_modules` is missing".into())),
        };
        let map_of = |key: &str| -> BTreeMap<String, f64> {
            v.get(key)
                .and_then(Value::as_object)
                .map(|m| m.iter().filter_map(|(k, x)| x.as_f64().map(|f| (k.clone(), f))).collect())
                .unwrap_or_default()
        };
        Ok(Self {
            r,
            lora_alpha: v.get("lora_alpha").and_then(Value::as_f64).unwrap_or(8.0) as f32,
            use_rslora: v.get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
            target_modules,
            rank_pattern: map_of("rank_pattern").into_iter().map(|(k, x)| (k, x as usize)).collect(),
            alpha_pattern: map_of("alpha_pattern").into_iter().map(|(k, x)| (k, x as f32)).collect(),
            fan_in_fan_out: v.get("fan_in_fan_out").and_then(Value::as_bool).unwrap_or(false),
            lora_dropout: v.get("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0) as f32,
            base_model_name_or_path: v.get("base_model_name_or_path").and_then(Value::as_str).map(String::from),
        })
    }

    /// `adapter_config.json` as PEFT (0.21) writes and loads it: a plain LoRA adapter for a causal
    /// language model, in inference mode.
    pub fn to_json(&self) -> String {
        // Whole numbers as JSON integers, as PEFT writes them; others by their shortest f32
        // spelling (0.1, not 0.10000000149011612).
        let num = |x: f32| {
            if x.fract() == 0.0 && x.abs() < 1e9 {
                json!(x as i64)
            } else {
                json!(x.to_string().parse::<f64>().unwrap_or(x as f64))
            }
        };
        let alpha_pattern: serde_json::Map<String, Value> = self.alpha_pattern.iter().map(|(k, &a)| (k.clone(), num(a))).collect();
        let v = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": self.base_model_name_or_path,
            "revision": null,
            "r": self.r,
            "lora_alpha": num(self.lora_alpha),
            "lora_dropout": if self.lora_dropout == 0.0 { json!(0.0) } else { num(self.lora_dropout) },
            "target_modules": self.target_modules,
            "exclude_modules": null,
            "fan_in_fan_out": self.fan_in_fan_out,
            "bias": "none",
            "use_rslora": self.use_rslora,
            "use_dora": false,
            "lora_bias": false,
            "modules_to_save": null,
            "init_lora_weights": true,
            "layers_to_transform": null,
            "layers_pattern": null,
            "rank_pattern": self.rank_pattern,
            "alpha_pattern": alpha_pattern,
            "inference_mode": true,
        });
        serde_json::to_string_pretty(&v).expect("a JSON value serialises")
    }

    pub fn rank_for(&self, module: &str) -> usize {
        self.rank_pattern.iter().find(|(k, _)| pattern_matches(k, module)).map_or(self.r, |(_, &r)| r)
    }

    pub fn alpha_for(&self, module: &str) -> f32 {
        self.alpha_pattern.iter().find(|(k, _)| pattern_matches(k, module)).map_or(self.lora_alpha, |(_, &a)| a)
    }

    /// s = α/r, or α/√r with rsLoRA.
    pub fn scale_for(&self, module: &str) -> f32 {
        let (r, alpha) = (self.rank_for(module) as f32, self.alpha_for(module));
        if self.use_rslora { alpha / r.sqrt() } else { alpha / r }
    }
}

/// One module's adapter.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// [r, in]
    pub a: HostTensor,
    /// [out, r]
    pub b: HostTensor,
    pub scale: f32,
}

/// An adapter as PEFT saves it: module path (e.g. `model.layers.0.self_attn.q_proj`) → (A, B).
#[derive(Debug, Clone)]
pub struct Adapter {
    pub config: LoraConfig,
    pub modules: BTreeMap<String, LoraPair>,
}

const PREFIX: &str = "base_model.model.";

impl Adapter {
    pub fn from_files(config_json: &str, weights: &[u8]) -> Result<Self, LoraError> {
        let config = LoraConfig::from_json(config_json)?;
        let tensors = load_safetensors("adapter_model.safetensors", weights).map_err(|e| LoraError::Weights(e.to_string()))?;
        let mut halves: HashMap<String, (Option<HostTensor>, Option<HostTensor>)> = HashMap::new();
        for (key, t) in tensors {
            let path = key.strip_prefix(PREFIX).unwrap_or(&key);
            let (module, is_a) = if let Some(m) = path.strip_suffix(".lora_A.weight") {
                (m, true)
            } else if let Some(m) = path.strip_suffix(".lora_B.weight") {
                (m, false)
            } else {
                return Err(LoraError::Weights(format!("unexpected tensor `{key}` (only LoRA A and B weights are supported)")));
            };
            let entry = halves.entry(module.to_string()).or_default();
            if is_a { entry.0 = Some(t) } else { entry.1 = Some(t) }
        }
        let mut modules = BTreeMap::new();
        for (module, pair) in halves {
            let (Some(a), Some(b)) = pair else {
                return Err(LoraError::Weights(format!("`{module}` has only one of lora_A and lora_B")));
            };
            let r = config.rank_for(&module);
            if a.shape.len() != 2 || b.shape.len() != 2 || a.shape[0] != r || b.shape[1] != r {
                return Err(LoraError::Shape { module, expected: vec![r], found: [a.shape, b.shape].concat() });
            }
            if let Some(half) = [("lora_A", &a), ("lora_B", &b)].iter().find(|(_, t)| t.data.iter().any(|v| !v.is_finite())) {
                return Err(LoraError::Weights(format!(
                    "`{module}.{}` contains NaN or infinite values: the run that saved it diverged; use an earlier checkpoint or train again with a lower learning rate",
                    half.0
                )));
            }
            let scale = config.scale_for(&module);
            modules.insert(module, LoraPair { a, b, scale });
        }
        Ok(Self { config, modules })
    }

    /// PEFT's two files: (`adapter_config.json` text, `adapter_model.safetensors` bytes), keys
    /// `base_model.model.<module>.lora_A.weight` (A [r, in]) and `….lora_B.weight` (B [out, r]).
    pub fn to_files(&self) -> Result<(String, Vec<u8>), LoraError> {
        let mut tensors = Vec::new();
        for (module, pair) in &self.modules {
            tensors.push((format!("{PREFIX}{module}.lora_A.weight"), pair.a.clone()));
            tensors.push((format!("{PREFIX}{module}.lora_B.weight"), pair.b.clone()));
        }
        let bytes = save_safetensors(&tensors).map_err(|e| LoraError::Weights(e.to_string()))?;
        Ok((self.config.to_json(), bytes))
    }

    /// Write `adapter_config.json` and `adapter_model.safetensors` into `dir` (created if needed).
    /// Each file is written next to its place and renamed over it, so an interrupted save leaves the
    /// previous adapter whole.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        let (config, weights) = self.to_files().map_err(std::io::Error::other)?;
        std::fs::create_dir_all(dir)?;
        for (name, bytes) in [("adapter_model.safetensors", weights.as_slice()), ("adapter_config.json", config.as_bytes())] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(name))?;
        }
        Ok(())
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub fn load_dir(dir: &std::path::Path) -> Result<Self, LoraError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|_| LoraError::MissingFile { path: path.display().to_string() })
        };
        let config = String::from_utf8(read("adapter_config.json")?).map_err(|_| LoraError::Config("not UTF-8".into()))?;
        Self::from_files(&config, &read("adapter_model.safetensors")?)
    }
}

/// Add s·(B·A)[rows] to a linear layer's weight (respecting its layout). `rows` selects the part of
/// B that belongs to this layer (all of it, or one third of GPT-2's fused c_attn). A compact weight
/// (f16, Q4_1, …) is merged into an f32 copy that replaces it: rounding W + ΔW back to 4 bits would
/// lose most of ΔW, and a merged model is saved in f32 anyway.
fn merge_into(l: &mut Linear, pair: &LoraPair, row0: usize) {
    let mut w = l.weight.to_f32();
    let r = pair.a.shape[0];
    let (in_dim, out_dim) = (l.in_dim, l.out_dim);
    for o in 0..out_dim {
        let b_row = &pair.b.data[(row0 + o) * r..(row0 + o + 1) * r];
        for i in 0..in_dim {
            let mut d = 0.0f32;
            for (k, &bv) in b_row.iter().enumerate() {
                d += bv * pair.a.data[k * in_dim + i];
            }
            let idx = match l.layout {
                WeightLayout::OutIn => o * in_dim + i,
                WeightLayout::InOut => i * out_dim + o,
            };
            w.data[idx] += pair.scale * d;
        }
    }
    l.weight = Weight::from_f32(&w, WeightFormat::F32, "merged").expect("f32 takes any shape");
}

/// W += s·B·A for every module of the adapter (on the CPU), checking shapes first.
pub fn merge(model: &mut Model, adapter: &Adapter) -> Result<(), LoraError> {
    let model_type = model.config.model_type.clone();
    for (module, pair) in &adapter.modules {
        let unknown = || LoraError::UnknownModule { module: module.clone(), model_type: model_type.clone() };
        let (index, sites) = module_sites(model.config.arch, module).ok_or_else(unknown)?;
        let block = model.blocks.get_mut(index).ok_or_else(unknown)?;
        let mut dims = Vec::new();
        for site in &sites {
            let l = site.linear_mut(block).ok_or_else(unknown)?;
            dims.push((l.in_dim, l.out_dim));
        }
        let in_dim = dims[0].0;
        let out_total: usize = dims.iter().map(|d| d.1).sum();
        let r = pair.a.shape[0];
        if pair.a.shape != [r, in_dim] || pair.b.shape != [out_total, r] {
            return Err(LoraError::Shape {
                module: module.clone(),
                expected: vec![r, in_dim, out_total, r],
                found: [pair.a.shape.clone(), pair.b.shape.clone()].concat(),
            });
        }
        // B's row blocks feed the sites in order (q, k, v for GPT-2's fused c_attn).
        let mut row0 = 0;
        for (site, (_, out)) in sites.iter().zip(dims) {
            merge_into(site.linear_mut(block).expect("checked above"), pair, row0);
            row0 += out;
        }
    }
    Ok(())
}
