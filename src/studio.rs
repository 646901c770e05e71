//! The engine behind the web app, platform-neutral so it is tested natively and in the browser:
//! a [`Studio`] holds the GPU, one model on it (its frozen weights as stored or in a chosen format),
//! its tokenizer and what it came from ([`ModelSource`]: a folder's files or a GGUF), and offers
//! what the page needs as plain async calls — text statistics and the train/validation split,
//! adapter sizes and a memory estimate for the settings, training runs ([`Run`]) step by step,
//! validation loss, generation with or without the adapter, the adapter's PEFT files (or one zip)
//! and the merged model. The page's components only call these; they never touch GPU buffers.

use std::sync::Arc;

use crate::generate::{self, Sampling};
use crate::gguf::{self, GgufError};
use crate::gpu::{GpuContext, GpuError};
use crate::lora::{self, Adapter, LoraError, LoraOptions};
use crate::model::{config_json_f32, save_safetensors, Arch, Branch, Config, GpuModel, Model, ModelError, ModelFiles, Tokenizer, WeightFormat};
use crate::train::memory::MemoryBudget;
use crate::train::{self, ChatTemplate, Dataset, GpuLora, Session, StepReport, TemplateError, TrainError, TrainSettings, TrainingState};
use crate::zip::{self, ZipError};

mod examples;
pub use examples::{ExampleSet, ExampleStats, HeldOut, TrainData};
pub use train::DataRecord;

/// GPU memory the page assumes a browser tab can use: WebGPU tells a page no memory size, and
/// integrated GPUs share the machine's memory with everything else (see [`Studio::memory_hint`]).
pub const TAB_GPU_MEMORY: u64 = 4 << 30;

/// Everything the page can fail with, as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum StudioError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Train(TrainError),
    #[error(transparent)]
    Zip(#[from] ZipError),
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Export(#[from] train::ExportError),
    /// A set of chosen files that is not a model or an adapter: the sentence says what is missing.
    #[error("{0}")]
    Files(String),
    #[error(
        "the text has {tokens} tokens, too short for one training window and one validation window of \
         {seq_len} tokens (it needs at least {needed}): paste more text or lower the sequence length"
    )]
    TextTooShort { tokens: usize, seq_len: usize, needed: usize },
    #[error(
        "only {usable} example{} can be trained on{}: training needs at least two (one to train on and one to validate on)",
        if *usable == 1 { "" } else { "s" },
        if *dropped > 0 { format!(" ({dropped} had no answer token left within the sequence length)") } else { String::new() }
    )]
    TooFewExamples { usable: usize, dropped: usize },
    #[error("{0}")]
    TooBig(String),
    #[error("tensor `{name}` cannot be kept in {format}: {detail}; choose “as stored”, f16 or f32 under Frozen weights")]
    Format { name: String, format: WeightFormat, detail: String },
    #[error("the adapter has already taken {done} steps: set the number of steps above {done} to train it further")]
    AlreadyTrained { done: usize },
    /// `TrainError::OverMemory` in the page's words (its fields instead of the CLI's flags).
    #[error("Training needs {} of GPU memory (frozen weights {}, activations {}, adapter with AdamW state {}), more than the GPU memory limit of {}: lower the batch, the sequence length or the rank{}, load the model with compact frozen weights (f16, q8_0 or q4_0), or raise the limit if this GPU has the memory", train::memory::human(need.total()), train::memory::human(need.weights), train::memory::human(need.activations), train::memory::human(need.adapter + need.optimizer), train::memory::human_limit(*limit), train::memory::checkpoint_advice(*checkpointed, "turn on gradient checkpointing"))]
    OverMemory { need: MemoryBudget, limit: u64, checkpointed: Option<u64> },
}

impl From<TrainError> for StudioError {
    fn from(e: TrainError) -> Self {
        match e {
            // The CLI's sentence names --seq-len; the page has a field instead.
            TrainError::TextTooShort { tokens, seq_len, needed } => StudioError::TextTooShort { tokens, seq_len, needed },
            // The CLI's sentence names --steps; the page's names its field.
            TrainError::AlreadyTrained { done } => StudioError::AlreadyTrained { done },
            TrainError::OverMemory { need, limit, checkpointed } => StudioError::OverMemory { need, limit, checkpointed },
            // The CLI's sentence names --seq-len too.
            TrainError::TooFewExamples { usable, dropped } => StudioError::TooFewExamples { usable, dropped },
            e => StudioError::Train(e),
        }
    }
}

impl StudioError {
    /// The GPU error underneath, if any (the page treats a lost device specially).
    pub fn gpu(&self) -> Option<&GpuError> {
        match self {
            StudioError::Gpu(e) | StudioError::Model(ModelError::Gpu(e)) => Some(e),
            StudioError::Train(TrainError::Gpu(e) | TrainError::Model(ModelError::Gpu(e))) => Some(e),
            _ => None,
        }
    }

    pub fn is_device_lost(&self) -> bool {
        matches!(self.gpu(), Some(GpuError::DeviceLost(_)))
    }
}

/// What the page shows about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    /// config.json's `architectures[0]` (e.g. LlamaForCausalLM), else its model_type.
    pub architecture: String,
    pub model_type: String,
    pub params: usize,
    pub layers: usize,
    pub hidden: usize,
    pub vocab: usize,
    pub context: usize,
    /// Where it came from, for people: "a model folder" or the GGUF's general.name and file name.
    pub source: String,
    /// The frozen matrices' formats on the GPU and how many of each (e.g. [(q4_1, 210), (q8_0, 1)]).
    pub formats: Vec<(WeightFormat, usize)>,
    /// Bytes the frozen model takes on the GPU, as `GpuContext::memory()` measured them at upload.
    pub weight_bytes: u64,
}

impl ModelInfo {
    /// "q4_1 ×210, q8_0 ×1".
    pub fn formats_text(&self) -> String {
        self.formats.iter().map(|(f, n)| format!("{f} ×{n}")).collect::<Vec<_>>().join(", ")
    }
}

/// What a model is loaded from, kept by the studio to load it again (a lost device) and to rebuild
/// the host model for the merged download.
#[derive(Clone)]
pub enum ModelSource {
    /// A Hugging Face folder's files (f16 stays f16).
    Files(ModelFiles),
    /// A llama GGUF file: its name (which adapters name as their base) and its bytes, shared
    /// rather than copied (the page keeps one copy of a 100 MB file).
    Gguf { file_name: String, bytes: Arc<[u8]> },
}

impl From<ModelFiles> for ModelSource {
    fn from(files: ModelFiles) -> Self {
        ModelSource::Files(files)
    }
}

impl ModelSource {
    /// The host model, its tokenizer, config.json's text and a description of the source.
    fn host_model(&self) -> Result<(Model, Tokenizer, String, String), StudioError> {
        match self {
            ModelSource::Files(files) => {
                let (model, tokenizer) = Model::from_files(files)?;
                Ok((model, tokenizer, files.config.clone(), "a model folder".into()))
            }
            ModelSource::Gguf { file_name, bytes } => {
                let imported = gguf::import(bytes)?;
                // The tokenizer is rebuilt from the file's vocabulary, as `loratab import-gguf` does.
                let (model, tokenizer) = imported.model()?;
                let kinds = imported.kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect::<Vec<_>>().join(", ");
                let title = imported.name.as_deref().map(|n| format!("{n}, ")).unwrap_or_default();
                Ok((model, tokenizer, imported.config.to_string(), format!("{title}GGUF file {file_name} ({kinds})")))
            }
        }
    }
}

/// Whether `name` is a GGUF file by its name (the page routes a dropped file by it).
pub fn is_gguf(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".gguf")
}

/// Token count and the train/validation split of a text at one sequence length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextStats {
    pub tokens: usize,
    pub seq_len: usize,
    pub train_windows: usize,
    pub validation_windows: usize,
    /// Held-out tokens (the validation windows plus the short tail).
    pub validation_tokens: usize,
}

/// A new adapter's size for given options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSize {
    pub params: usize,
    /// Bytes of adapter_model.safetensors (f32) plus adapter_config.json.
    pub bytes: usize,
    /// params / the base model's parameters.
    pub fraction: f64,
}

/// A training run on the studio's model.
pub struct Run {
    pub session: Session,
    /// The held-out examples with an answer, as written (for Compare; empty for a text).
    held_out: Vec<HeldOut>,
    /// What it trains on, recorded beside its adapter.
    record: DataRecord,
}

impl Run {
    pub fn steps_done(&self) -> usize {
        self.session.steps_done()
    }

    pub fn finished(&self) -> bool {
        self.session.finished()
    }

    pub fn data(&self) -> &Dataset {
        &self.session.data
    }
}

/// An adapter on the host: what a download holds and what survives a lost GPU.
#[derive(Debug, Clone)]
pub struct SavedAdapter {
    pub adapter: Adapter,
    /// AdamW's moments and the step, for an exact continuation (absent in plain PEFT folders).
    pub state: Option<TrainingState>,
    /// What it was trained on: template and masking for examples (absent in plain PEFT folders).
    pub data: Option<DataRecord>,
}

const ADAPTER_CONFIG: &str = "adapter_config.json";
const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const STATE: &str = "training_state.safetensors";

/// The file name without any folder (a picked folder gives `dir/name`).
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// `files` with every zip among them replaced by its contents.
fn unzip_all(files: Vec<(String, Vec<u8>)>) -> Result<Vec<(String, Vec<u8>)>, StudioError> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        if name.to_ascii_lowercase().ends_with(".zip") {
            out.extend(zip::read(&bytes)?);
        } else {
            out.push((name, bytes));
        }
    }
    Ok(out)
}

fn take(files: &mut Vec<(String, Vec<u8>)>, name: &str) -> Option<Vec<u8>> {
    let i = files.iter().position(|(n, _)| base_name(n) == name)?;
    Some(files.swap_remove(i).1)
}

impl SavedAdapter {
    /// The step the adapter was saved at (0 without a training state).
    pub fn step(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.step as usize)
    }

    /// PEFT's two files: (adapter_config.json, adapter_model.safetensors).
    pub fn peft_files(&self) -> Result<(String, Vec<u8>), StudioError> {
        Ok(self.adapter.to_files()?)
    }

    /// One zip: PEFT's two files, plus training_state.safetensors and training_data.json when there
    /// are (PEFT ignores both).
    pub fn zip(&self) -> Result<Vec<u8>, StudioError> {
        let (config, weights) = self.peft_files()?;
        let state = self.state.as_ref().map(|s| s.to_bytes()).transpose()?;
        let data = self.data.as_ref().map(DataRecord::to_json);
        let mut files: Vec<(&str, &[u8])> = vec![(ADAPTER_CONFIG, config.as_bytes()), (ADAPTER_WEIGHTS, weights.as_slice())];
        if let Some(state) = &state {
            files.push((STATE, state.as_slice()));
        }
        if let Some(data) = &data {
            files.push((train::DATA_FILE, data.as_bytes()));
        }
        Ok(zip::store(&files)?)
    }

    /// An adapter from chosen files: adapter_config.json + adapter_model.safetensors (+ optional
    /// training_state.safetensors and training_data.json, or an older CLI folder's
    /// sft_config.json), or a zip holding them.
    pub fn from_files(files: Vec<(String, Vec<u8>)>) -> Result<Self, StudioError> {
        let mut files = unzip_all(files)?;
        let (Some(config), Some(weights)) = (take(&mut files, ADAPTER_CONFIG), take(&mut files, ADAPTER_WEIGHTS)) else {
            return Err(StudioError::Files(
                "an adapter needs adapter_config.json and adapter_model.safetensors (or a zip holding them)".into(),
            ));
        };
        let config = String::from_utf8(config).map_err(|_| LoraError::Config("it is not UTF-8 text".into()))?;
        let adapter = Adapter::from_files(&config, &weights)?;
        let state = take(&mut files, STATE).map(|b| TrainingState::from_bytes(&b)).transpose()?;
        let data = [train::DATA_FILE, train::OLD_DATA_FILE]
            .into_iter()
            .find_map(|name| take(&mut files, name).map(|b| DataRecord::from_json(name, &b)))
            .transpose()
            .map_err(StudioError::from)?;
        Ok(Self { adapter, state, data })
    }
}

/// A model from chosen files (a picked folder, several files, or a zip): config.json,
/// tokenizer.json, and model.safetensors or model.safetensors.index.json with its shards.
pub fn model_files(files: Vec<(String, Vec<u8>)>) -> Result<ModelFiles, StudioError> {
    let mut files = unzip_all(files)?;
    let missing = |what: &str| {
        StudioError::Files(format!(
            "{what} is missing: choose a Hugging Face model folder (or its files) with config.json, model.safetensors and tokenizer.json"
        ))
    };
    let config = take(&mut files, "config.json").ok_or_else(|| missing("config.json"))?;
    let config = String::from_utf8(config).map_err(|_| ModelError::Config("it is not UTF-8 text".into()))?;
    let tokenizer = take(&mut files, "tokenizer.json").ok_or_else(|| missing("tokenizer.json"))?;
    let weights = if let Some(w) = take(&mut files, "model.safetensors") {
        vec![("model.safetensors".to_string(), w)]
    } else if let Some(index) = take(&mut files, "model.safetensors.index.json") {
        let bad = |reason: String| ModelError::Safetensors { file: "model.safetensors.index.json".into(), reason };
        let index: serde_json::Value = serde_json::from_slice(&index).map_err(|e| bad(e.to_string()))?;
        let map = index.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("it has no weight_map".into()))?;
        let mut shards: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shards.sort();
        shards.dedup();
        let mut weights = Vec::new();
        for shard in shards {
            weights.push((shard.to_string(), take(&mut files, shard).ok_or_else(|| missing(shard))?));
        }
        weights
    } else {
        return Err(missing("model.safetensors"));
    };
    let text = |name: &str, bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| ModelError::Json { file: name.into(), reason: "it is not UTF-8 text".into() });
    let generation_config = take(&mut files, "generation_config.json").map(|b| text("generation_config.json", b)).transpose()?;
    let tokenizer_config = take(&mut files, "tokenizer_config.json").map(|b| text("tokenizer_config.json", b)).transpose()?;
    Ok(ModelFiles { config, weights, tokenizer, generation_config, tokenizer_config })
}

/// Refuse, before uploading, a model whose training would not fit this GPU's buffer limits: the
/// trainer keeps each block weight in one storage binding. (A large vocabulary is split across
/// buffers; whether a batch's logits fit is the trainer's check, which names batch and seq-len.)
fn check_fits(ctx: &GpuContext, c: &Config) -> Result<(), StudioError> {
    let limit = ctx.max_binding();
    let layer = 4 * (c.hidden_size.max(c.q_dim()) * c.intermediate_size.max(3 * c.hidden_size)) as u64;
    if layer > limit {
        return Err(StudioError::TooBig(format!(
            "one layer of this model ({}) is larger than the largest buffer this GPU allows ({}): choose a smaller model",
            crate::train::memory::human(layer),
            crate::train::memory::human(limit)
        )));
    }
    Ok(())
}

/// Prompt length of the generated token [`Studio::profile`] measures.
pub const PROFILE_PROMPT: usize = 32;

/// What [`Studio::profile`] measured: the step and the token, and the matmul variant each shape
/// class uses on this device.
#[derive(Debug, Clone, PartialEq)]
pub struct Profiled {
    pub work: train::profile::WorkProfile,
    pub matmul: Vec<crate::gpu::tune::Choice>,
}

/// The GPU, one model on it and everything the page asks of it.
pub struct Studio {
    pub ctx: GpuContext,
    pub model: GpuModel,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
    /// What the model was loaded from, to rebuild the host model for a merged download.
    source: ModelSource,
    /// The format the frozen matrices were converted to at load (None: as stored).
    frozen: Option<WeightFormat>,
    /// The base model's last answer in [`Studio::compare`], by what determines it.
    base_answer: std::sync::Mutex<Option<(BaseKey, String)>>,
}

/// What a Compare asks: a text to continue, or a conversation to answer as the assistant (the
/// model's chat template with the assistant's header after it; a typed question is one user turn).
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Text(String),
    Chat(Vec<train::Message>),
}

/// A Compare's answers: the base model's, and the adapter's when a run was given.
#[derive(Debug, Clone, PartialEq)]
pub struct Compared {
    pub base: String,
    pub tuned: Option<String>,
    /// The base answer is the last Compare's: the same prompt tokens, length and sampling through
    /// weights that never change give the same text, so it was not generated again.
    pub base_reused: bool,
}

/// What fixes the base model's answer: the prompt's ids, the new tokens at most, and the sampling
/// (temperature bits, top-k, seed).
type BaseKey = (Vec<u32>, usize, u32, usize, u64);

impl Studio {
    /// Open the GPU and load `source` onto it, its frozen matrices in `frozen` (None: as stored).
    pub async fn open(source: ModelSource, name: &str, frozen: Option<WeightFormat>) -> Result<Self, StudioError> {
        // Parsed before the GPU is opened: a bad file is refused without touching the device.
        let host = source.host_model()?;
        let ctx = GpuContext::new().await?;
        Self::upload(ctx, source, host, name, frozen).await
    }

    /// Load `source` onto the GPU of `ctx` as stored; `name` is what the page calls the model.
    pub async fn load(ctx: GpuContext, source: impl Into<ModelSource>, name: &str) -> Result<Self, StudioError> {
        Self::load_as(ctx, source.into(), name, None).await
    }

    /// Load `source` onto the GPU of `ctx` with its frozen matrices converted to `frozen` (as
    /// load_in_8bit / load_in_4bit do), or as stored when None.
    pub async fn load_as(ctx: GpuContext, source: ModelSource, name: &str, frozen: Option<WeightFormat>) -> Result<Self, StudioError> {
        let host = source.host_model()?;
        Self::upload(ctx, source, host, name, frozen).await
    }

    async fn upload(
        ctx: GpuContext,
        source: ModelSource,
        (mut model, tokenizer, config_json, described): (Model, Tokenizer, String, String),
        name: &str,
        frozen: Option<WeightFormat>,
    ) -> Result<Self, StudioError> {
        if let Some(format) = frozen {
            model.convert_weights(format).map_err(|e| match e {
                // The library's sentence ends with the CLI's flag; the page names its select instead.
                ModelError::Format { name, detail } => {
                    let detail = detail.split(';').next().unwrap_or(&detail).to_string();
                    StudioError::Format { name, format, detail }
                }
                e => e.into(),
            })?;
        }
        let c = &model.config;
        check_fits(&ctx, c)?;
        let architecture = serde_json::from_str::<serde_json::Value>(&config_json)
            .ok()
            .and_then(|v| v.get("architectures")?.get(0)?.as_str().map(String::from))
            .unwrap_or_else(|| c.model_type.clone());
        let info = ModelInfo {
            name: name.to_string(),
            architecture,
            model_type: c.model_type.clone(),
            params: model.num_params(),
            layers: c.num_layers,
            hidden: c.hidden_size,
            vocab: c.vocab_size,
            context: c.max_positions,
            source: described,
            formats: model.weight_formats().into_iter().collect(),
            weight_bytes: 0,
        };
        let before = ctx.memory().live();
        let model = GpuModel::upload(&ctx, &model).await?;
        let info = ModelInfo { weight_bytes: ctx.memory().live() - before, ..info };
        Ok(Self { ctx, model, tokenizer, info, source, frozen, base_answer: Default::default() })
    }

    pub fn config(&self) -> &Config {
        &self.model.config
    }

    /// What the model was loaded from (to load it again on a new device).
    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// The format chosen for the frozen matrices at load (None: as stored).
    pub fn frozen(&self) -> Option<WeightFormat> {
        self.frozen
    }

    /// GPU bytes in use now, as `GpuContext::memory()` counts them.
    pub fn gpu_bytes(&self) -> u64 {
        self.ctx.memory().live()
    }

    /// GPU tensors live now (the soak test watches them stay flat).
    pub fn gpu_tensors(&self) -> u64 {
        self.ctx.memory().tensors()
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, StudioError> {
        Ok(self.tokenizer.encode(text)?)
    }

    /// Token count and split of `text` at `seq_len` (errors: empty text, too short for two windows).
    pub fn text_stats(&self, text: &str, seq_len: usize) -> Result<TextStats, StudioError> {
        let tokens = self.tokenize(text)?;
        if tokens.is_empty() {
            return Err(ModelError::EmptyText.into());
        }
        let n = tokens.len();
        let data = Dataset::new(tokens, seq_len)?;
        Ok(TextStats {
            tokens: n,
            seq_len,
            train_windows: data.train_windows,
            validation_windows: data.validation_windows,
            validation_tokens: data.validation_tokens().len(),
        })
    }

    /// Trainable parameters and file size of a new adapter with `opts` on this model.
    pub fn adapter_size(&self, opts: &LoraOptions) -> Result<AdapterSize, StudioError> {
        train::validate_lora(opts)?;
        let adapter = Adapter::from_options(self.config(), opts)?;
        let params: usize = adapter.modules.values().map(|p| p.a.data.len() + p.b.data.len()).sum();
        let (config, weights) = adapter.to_files()?;
        Ok(AdapterSize {
            params,
            bytes: config.len() + weights.len(),
            fraction: params as f64 / self.info.params as f64,
        })
    }

    /// Training GPU memory for `opts` and `settings`, worked out before anything is allocated
    /// (`train::memory`: equal to what the run allocates, as tests/train_memory.rs checks).
    pub fn memory(&self, opts: &LoraOptions, settings: &TrainSettings) -> Result<MemoryBudget, StudioError> {
        train::validate_lora(opts)?;
        let adapter = Adapter::from_options(self.config(), opts)?;
        Ok(train::memory::estimate(self.model.weight_bytes(), self.config(), &adapter, settings))
    }

    /// A sentence for the settings panel when training with `settings` needs more GPU memory than
    /// `limit` bytes: suggest gradient checkpointing (with what it would need) while it is off,
    /// else a smaller batch or sequence. None when it fits (or the settings are not usable).
    /// (Over `settings.max_memory`, [`Studio::start`] refuses the run with the same figures.)
    pub fn memory_hint(&self, opts: &LoraOptions, settings: &TrainSettings, limit: u64) -> Option<String> {
        let need = self.memory(opts, settings).ok()?.total();
        if need <= limit {
            return None;
        }
        let (need, limit_s) = (train::memory::human(need), train::memory::human_limit(limit));
        Some(if settings.grad_checkpoint {
            format!("Training needs {need}, more than the GPU memory limit of {limit_s}: lower the batch or the sequence length.")
        } else {
            let checkpointed = TrainSettings { grad_checkpoint: true, ..settings.clone() };
            let less = train::memory::human(self.memory(opts, &checkpointed).ok()?.total());
            format!("Training needs {need}, more than the GPU memory limit of {limit_s}: gradient checkpointing would need {less}.")
        })
    }

    /// A new adapter with `opts`, ready to train on `text` with `settings`; refused before anything
    /// is allocated when the run needs more than `settings.max_memory`.
    pub async fn start(&self, text: &str, opts: &LoraOptions, settings: TrainSettings) -> Result<Run, StudioError> {
        self.start_on(&TrainData::Text(text.into()), opts, settings).await
    }

    /// A new adapter with `opts`, ready to train on `data` (a text, or examples) with `settings`.
    pub async fn start_on(&self, data: &TrainData, opts: &LoraOptions, settings: TrainSettings) -> Result<Run, StudioError> {
        // The data is checked before anything is allocated.
        let prepared = self.dataset(data, &settings)?;
        train::validate_lora(opts)?;
        train::memory::check(self.model.weight_bytes(), self.config(), &Adapter::from_options(self.config(), opts)?, &settings)?;
        let lora = train::new_lora(&self.ctx, &self.model, opts).await?;
        self.run(prepared, lora, settings).await
    }

    /// Continue training `saved` on `text` up to `settings.steps` (exactly, when it has its training state).
    pub async fn resume(&self, text: &str, saved: &SavedAdapter, settings: TrainSettings) -> Result<Run, StudioError> {
        self.resume_on(&TrainData::Text(text.into()), saved, settings).await
    }

    /// [`Studio::resume`] on a text or examples.
    pub async fn resume_on(&self, data: &TrainData, saved: &SavedAdapter, settings: TrainSettings) -> Result<Run, StudioError> {
        train::check_resume(saved.step(), settings.steps)?;
        self.load_adapter_on(data, saved, settings).await
    }

    /// `saved` on the GPU as a run on `text` (finished already when it has taken `settings.steps`):
    /// to compare with, or to train further.
    pub async fn load_adapter(&self, text: &str, saved: &SavedAdapter, settings: TrainSettings) -> Result<Run, StudioError> {
        self.load_adapter_on(&TrainData::Text(text.into()), saved, settings).await
    }

    /// [`Studio::load_adapter`] on a text or examples.
    pub async fn load_adapter_on(&self, data: &TrainData, saved: &SavedAdapter, settings: TrainSettings) -> Result<Run, StudioError> {
        let prepared = self.dataset(data, &settings)?;
        train::memory::check(self.model.weight_bytes(), self.config(), &saved.adapter, &settings)?;
        let mut lora = GpuLora::new(&self.ctx, &self.model, &saved.adapter).await?;
        if let Some(state) = &saved.state {
            state.apply(&self.ctx, &mut lora)?;
        }
        self.run(prepared, lora, settings).await
    }

    /// The settings checked and `data` cut with them.
    fn dataset(&self, data: &TrainData, settings: &TrainSettings) -> Result<examples::Prepared, StudioError> {
        settings.validate(self.config())?;
        self.prepare(data, settings.seq_len)
    }

    async fn run(&self, prepared: examples::Prepared, lora: GpuLora, settings: TrainSettings) -> Result<Run, StudioError> {
        let examples::Prepared { data, held_out, record, .. } = prepared;
        Ok(Run { session: Session::with_data(&self.ctx, &self.model, data, lora, settings).await?, held_out, record })
    }

    /// One optimizer step of `run`.
    pub async fn step(&self, run: &mut Run) -> Result<StepReport, StudioError> {
        Ok(run.session.step(&self.ctx, &self.model).await?)
    }

    /// The loss of the held-out text with the adapter as trained so far.
    pub async fn validation_loss(&self, run: &Run) -> Result<f64, StudioError> {
        Ok(run.session.validation_loss(&self.ctx, &self.model).await?)
    }

    /// The adapter and optimizer state of `run`, copied to the host.
    pub async fn snapshot(&self, run: &Run) -> Result<SavedAdapter, StudioError> {
        let mut adapter = run.session.adapter(&self.ctx).await?;
        adapter.config.base_model_name_or_path = Some(self.info.name.clone());
        Ok(SavedAdapter { adapter, state: Some(run.session.state(&self.ctx).await?), data: Some(run.record.clone()) })
    }

    /// The validation loss as [`Studio::validation_loss`] measures it, keeping the adapter on the
    /// host as the run's best when it is the lowest so far ([`Session::validate`]).
    pub async fn validate(&self, run: &mut Run) -> Result<train::Validation, StudioError> {
        Ok(run.session.validate(&self.ctx, &self.model).await?)
    }

    /// The run's adapter with the lowest validation loss so far, as a download holds it.
    pub fn best(&self, run: &Run) -> Option<SavedAdapter> {
        let best = run.session.best()?;
        let mut adapter = best.adapter.clone();
        adapter.config.base_model_name_or_path = Some(self.info.name.clone());
        Some(SavedAdapter { adapter, state: Some(best.state.clone()), data: Some(run.record.clone()) })
    }

    /// Continue `prompt` by up to `max_tokens` tokens, with `run`'s adapter when given. The adapter
    /// runs beside the frozen weights (not merged into them: compact weights cannot hold W + s·B·A,
    /// and the base stays exactly the base for the next call).
    /// Generation stops at the model's EOS and end-of-turn tokens (`Config::stop_ids`).
    pub async fn generate(&self, prompt: &str, max_tokens: usize, sampling: &Sampling, adapter: Option<&Run>) -> Result<String, StudioError> {
        self.generate_ids(self.tokenize(prompt)?, max_tokens, sampling, adapter).await
    }

    /// The model's chat template: its own, or the plain `Question:`/`Answer:` one for a model
    /// without one (`ChatTemplate::for_model`).
    pub fn chat_template(&self) -> Result<ChatTemplate, StudioError> {
        Ok(ChatTemplate::for_model(&self.tokenizer, self.config())?)
    }

    /// The answer to `question` asked as a user turn through the model's chat template (with the
    /// assistant's header after it), as [`Studio::generate`] continues it: what a model tuned on
    /// examples is compared with.
    pub async fn generate_chat(&self, question: &str, max_tokens: usize, sampling: &Sampling, adapter: Option<&Run>) -> Result<String, StudioError> {
        self.answer(&[train::Message::new(train::Role::User, question)], max_tokens, sampling, adapter).await
    }

    /// Before and after: `ask` through the base model and, with `run`, through its adapter, with
    /// the same length and sampling (seed included). The frozen weights never change, so the base
    /// answer to the same prompt tokens, length and sampling as the last Compare's is that one
    /// again, not generated a second time (`Compared::base_reused`): a student comparing after
    /// each round of training waits for the adapter's answer only.
    pub async fn compare(&self, ask: &Ask, max_tokens: usize, sampling: &Sampling, run: Option<&Run>) -> Result<Compared, StudioError> {
        let ids = match ask {
            Ask::Text(prompt) => self.tokenize(prompt)?,
            Ask::Chat(context) => self.chat_ids(context)?,
        };
        let key: BaseKey = (ids.clone(), max_tokens, sampling.temperature.to_bits(), sampling.top_k, sampling.seed);
        let last = self.base_answer.lock().unwrap().as_ref().filter(|(k, _)| *k == key).map(|(_, a)| a.clone());
        let base_reused = last.is_some();
        let base = match last {
            Some(answer) => answer,
            None => {
                let answer = self.generate_ids(ids.clone(), max_tokens, sampling, None).await?;
                *self.base_answer.lock().unwrap() = Some((key, answer.clone()));
                answer
            }
        };
        let tuned = match run {
            Some(run) => Some(self.generate_ids(ids, max_tokens, sampling, Some(run)).await?),
            None => None,
        };
        Ok(Compared { base, tuned, base_reused })
    }

    /// The ids of `context` through the chat template with the assistant's header after it (what
    /// [`Studio::answer`] continues).
    fn chat_ids(&self, context: &[train::Message]) -> Result<Vec<u32>, StudioError> {
        Ok(self.chat_template()?.encode(&self.tokenizer, context, true)?)
    }

    async fn generate_ids(&self, ids: Vec<u32>, max_tokens: usize, sampling: &Sampling, adapter: Option<&Run>) -> Result<String, StudioError> {
        if ids.len() >= self.config().max_positions {
            return Err(ModelError::TooLong { tokens: ids.len(), max: self.config().max_positions }.into());
        }
        let lora = adapter.map(|r| &r.session.trainer.lora as &dyn Branch);
        let out = generate::generate(&self.ctx, &self.model, &ids, max_tokens, sampling, lora).await?;
        Ok(self.tokenizer.decode(&out)?)
    }

    /// A zip of the merged model folder (config.json, tokenizer.json, model.safetensors in f32) that
    /// transformers loads without PEFT.
    /// Whatever the base was (a folder, a GGUF, compact or not), the download is an f32 folder: the
    /// host model is rebuilt from the source as stored, so no conversion chosen at load is baked in.
    pub fn merged_model_zip(&self, adapter: &Adapter) -> Result<Vec<u8>, StudioError> {
        let (mut model, _, config, _) = self.source.host_model()?;
        lora::merge(&mut model, adapter)?;
        let weights = save_safetensors(&model.to_tensors())?;
        drop(model);
        let config = config_json_f32(&config)?;
        let mut files: Vec<(&str, &[u8])> = vec![("config.json", config.as_bytes())];
        let gguf_files;
        match &self.source {
            ModelSource::Files(f) => files.push(("tokenizer.json", f.tokenizer.as_slice())),
            ModelSource::Gguf { bytes, .. } => {
                // The tokenizer files as `loratab import-gguf` writes them.
                let imported = gguf::import(bytes)?;
                let json = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON values serialize");
                gguf_files = [
                    ("tokenizer.json", serde_json::to_vec(&imported.tokenizer).expect("JSON values serialize")),
                    ("tokenizer_config.json", json(&imported.tokenizer_config)),
                    ("generation_config.json", json(&imported.generation_config)),
                ];
                files.extend(gguf_files.iter().map(|(n, b)| (*n, b.as_slice())));
            }
        }
        files.push(("model.safetensors", weights.as_slice()));
        Ok(zip::store(&files)?)
    }

    /// Where the GPU time of one training step at `settings` with an adapter of `opts` (random
    /// tokens; the adapter is thrown away) and of one greedy generated token after a
    /// [`PROFILE_PROMPT`]-token prompt goes, by kernel kind (`gpu::profile`). Tuning is turned on
    /// first: classes not tuned on this device before are tuned in the untimed warm-up step, and
    /// the choices are stored (`gpu::tune`), so training afterwards uses them too.
    pub async fn profile(&self, opts: &LoraOptions, settings: TrainSettings) -> Result<Profiled, StudioError> {
        self.ctx.set_tuning(true);
        let work = train::profile::profile_work_with(&self.ctx, &self.model, opts, settings, PROFILE_PROMPT).await?;
        Ok(Profiled { work, matmul: self.ctx.choices() })
    }

    /// Use the matmul variants tuned on this device in an earlier session, if there are any (tuning
    /// then stays on, so a new shape class is tuned at its first use).
    pub fn use_stored_tuning(&self) -> bool {
        let stored = self.ctx.has_stored_tuning();
        if stored {
            self.ctx.set_tuning(true);
        }
        stored
    }

    /// True for GPT-2-style models, where q, k and v share one fused adapter.
    pub fn fused_qkv(&self) -> bool {
        self.config().arch == Arch::Gpt2
    }
}
