//! LoRA training on the GPU: [`GpuLora`] holds a PEFT adapter's A and B matrices with their
//! gradients and AdamW moments next to a frozen [`GpuModel`]; [`Trainer`] (`step.rs`) encodes one
//! training step — forward keeping activations, mean next-token cross-entropy, backward through the
//! frozen weights into every A and B, AdamW — into a single command encoder.
//!
//! For an adapted linear y = x·Wᵀ (+ b) + s·(x·Aᵀ)·Bᵀ (A [r, in], B [out, r]):
//!   u = x·Aᵀ [rows, r] (kept from the forward), g = dy·B [rows, r],
//!   dB = s·dyᵀ·u, dA = s·gᵀ·x, dx = dy·W + s·g·A.
//! GPT-2's fused `c_attn` has one A and one B [3d, r]; loratab's model runs q, k and v as three
//! linears, so B is kept as three row blocks (one per projection, each with its own gradient and
//! moments — AdamW is element-wise, so this is the same optimiser), g sums the three parts' dy·B_p,
//! and dA = s·gᵀ·x gets all three contributions, as PEFT's single A does. [`GpuLora::to_adapter`]
//! and [`GpuLora::read_grads`] put the blocks back together in PEFT's layout.

mod activations;
pub mod chat;
pub mod data;
pub mod examples;
pub mod export;
mod merge;
pub mod memory;
pub mod profile;
mod run;
mod step;

pub use chat::{ChatTemplate, DataRecord, TemplateError, DATA_FILE, OLD_DATA_FILE, PLAIN_TEMPLATE};
pub use data::{Dataset, Example, Examples};
pub use export::{frozen_rows, trl_export, ExportError, ExportFile, FrozenRows, TrlRun, TRL_SCRIPT};
pub use examples::{parse as parse_examples, Format, Kind, LineError, Message, Parsed, Record, Role};
pub use run::{check_resume, diverging, new_lora, validate_lora, Best, Decay, Schedule, Session, StepReport, TrainSettings, TrainingState, Validation, DIVERGING};
pub use step::{Trainer, TrainerOptions};

use std::collections::{BTreeMap, HashMap};

use crate::gpu::{GpuContext, GpuError, GpuTensor};
pub use crate::lora::{module_sites, Site};
use crate::lora::{Adapter, LoraConfig, LoraError, LoraPair};
use crate::model::{GpuLinear, GpuModel, HostTensor, ModelError};

/// What can go wrong while setting up or running training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Lora(#[from] LoraError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the training batch is not usable: {0}")]
    Batch(String),
    #[error("{0} is not supported by the trainer yet")]
    Unsupported(String),
    #[error("step {step} was not applied: its gradients are NaN or infinite, so training diverged. The adapter is the one from the step before; lower the learning rate{}", if *clipping { "" } else { " or clip gradients (--max-grad-norm 1.0)" })]
    NonFinite { step: usize, clipping: bool },
    /// The gradients were finite, but AdamW's update at this learning rate would have written ±∞ or
    /// NaN into the adapter or its moments: nothing was written and the step does not count.
    #[error("step {step} was not applied: at a learning rate of {lr:e} AdamW's update would have made the adapter or its optimizer state infinite or NaN, so training diverged. The adapter is the one from the step before; lower the learning rate{}", if *clipping { "" } else { " or clip gradients (--max-grad-norm 1.0)" })]
    UpdateOverflow { step: usize, lr: f32, clipping: bool },
    #[error("`{module}` cannot be merged on the GPU: its frozen weight is kept in {format}, which cannot hold W + s·B·A. Generation runs the adapter beside the weight instead; `loratab merge` merges into an f32 copy")]
    CompactMerge { module: String, format: crate::model::WeightFormat },
    #[error("the text has {tokens} tokens, too short for training with --seq-len {seq_len}: it needs at least {needed} (one window to train on and one to validate on); give more text or a smaller --seq-len")]
    TextTooShort { tokens: usize, seq_len: usize, needed: usize },
    #[error("only {usable} example{} can be trained on{}: training needs at least two (one to train on and one to validate on)", if *usable == 1 { "" } else { "s" }, if *dropped > 0 { format!(" ({dropped} had no answer token left within --seq-len)") } else { String::new() })]
    TooFewExamples { usable: usize, dropped: usize },
    /// A training setting that cannot work (rank 0, a learning rate ≤ 0, …): the sentence says which.
    #[error("{message}")]
    InvalidSetting { setting: &'static str, message: String },
    /// Resuming an adapter that has taken the run's steps already ([`check_resume`]); the front ends
    /// say it in their own words (the CLI names its folder, the page its field).
    #[error("the adapter has already taken {done} steps: give --steps above that to train on")]
    AlreadyTrained { done: usize },
    /// The run's memory estimate is above `TrainSettings::max_memory` ([`memory::check`]): refused
    /// before anything is allocated. The sentence names the CLI's flags; the page says it in its own words.
    #[error("training needs {} of GPU memory (frozen weights {}, activations {}, adapter with gradients and AdamW moments {}), more than the limit of {} (--max-memory): lower --batch, --seq-len or --rank{}, keep the frozen weights compact (--base-dtype f16, q8_0 or q4_0), or raise --max-memory", memory::human(need.total()), memory::human(need.weights), memory::human(need.activations), memory::human(need.adapter + need.optimizer), memory::human_limit(*limit), memory::checkpoint_advice(*checkpointed, "turn on --grad-checkpoint"))]
    OverMemory { need: memory::MemoryBudget, limit: u64, checkpointed: Option<u64> },
    #[error("the saved training state is not usable: {0}")]
    State(String),
    #[error("could not write {path}: {reason}")]
    Write { path: String, reason: String },
    #[error("{file} (what the adapter was trained on) is not usable: {reason}; leave it out to use the adapter without it")]
    Record { file: String, reason: String },
}

/// A trainable tensor: value, gradient, and AdamW's first and second moments (all the same shape).
pub struct Param {
    pub value: GpuTensor,
    pub grad: GpuTensor,
    pub m: GpuTensor,
    pub v: GpuTensor,
}

impl Param {
    async fn new(ctx: &GpuContext, data: &[f32], shape: &[usize]) -> Result<Self, GpuError> {
        Ok(Self {
            value: ctx.upload(data, shape).await?,
            grad: ctx.zeros(shape).await?,
            m: ctx.zeros(shape).await?,
            v: ctx.zeros(shape).await?,
        })
    }
}

/// One adapted module: A [r, in] and B split into row blocks, one per site it feeds.
pub struct LoraModule {
    /// PEFT's module path, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub block: usize,
    pub rank: usize,
    pub in_dim: usize,
    pub scale: f32,
    pub a: Param,
    /// (site, B rows for that site [out_site, r]) in B's row order.
    pub parts: Vec<(Site, Param)>,
    /// Per part: frozen (no gradient, no update; see [`GpuLora::freeze`]).
    pub frozen: Vec<bool>,
}

/// An adapter on the GPU for one [`GpuModel`].
pub struct GpuLora {
    pub config: LoraConfig,
    pub modules: Vec<LoraModule>,
    /// (block, site) → (module index, part index).
    index: HashMap<(usize, Site), (usize, usize)>,
    /// AdamW steps taken so far.
    pub step: u32,
}

const PREFIX: &str = "base_model.model.";

impl GpuLora {
    /// Upload `adapter` for `model`, checking that every module exists and has the right shapes.
    pub async fn new(ctx: &GpuContext, model: &GpuModel, adapter: &Adapter) -> Result<Self, TrainError> {
        let c = &model.config;
        let mut modules = Vec::new();
        let mut index = HashMap::new();
        for (name, pair) in &adapter.modules {
            let unknown = || LoraError::UnknownModule { module: name.clone(), model_type: c.model_type.clone() };
            let (block, sites) = module_sites(c.arch, name).ok_or_else(unknown)?;
            let b = model.blocks.get(block).ok_or_else(unknown)?;
            let layers: Vec<&GpuLinear> = sites.iter().map(|s| s.linear(b)).collect::<Option<_>>().ok_or_else(unknown)?;
            let in_dim = layers[0].in_dim;
            let out_total: usize = layers.iter().map(|l| l.out_dim).sum();
            let r = pair.a.shape[0];
            if pair.a.shape != [r, in_dim] || pair.b.shape != [out_total, r] {
                return Err(LoraError::Shape {
                    module: name.clone(),
                    expected: vec![r, in_dim, out_total, r],
                    found: [pair.a.shape.clone(), pair.b.shape.clone()].concat(),
                }
                .into());
            }
            let a = Param::new(ctx, &pair.a.data, &[r, in_dim]).await?;
            let mut parts = Vec::new();
            let mut row0 = 0;
            for (p, (site, layer)) in sites.iter().zip(&layers).enumerate() {
                let rows = layer.out_dim;
                let data = &pair.b.data[row0 * r..(row0 + rows) * r];
                parts.push((*site, Param::new(ctx, data, &[rows, r]).await?));
                if index.insert((block, *site), (modules.len(), p)).is_some() {
                    return Err(TrainError::Unsupported(format!("two adapters on one layer (`{name}`)")));
                }
                row0 += rows;
            }
            let frozen = vec![false; parts.len()];
            modules.push(LoraModule { name: name.clone(), block, rank: r, in_dim, scale: pair.scale, a, parts, frozen });
        }
        Ok(Self { config: adapter.config.clone(), modules, index, step: 0 })
    }

    /// Keep the B rows of `sites` as they are (zero for a new adapter): their gradient is never
    /// formed and AdamW skips them. For GPT-2's fused c_attn when only some of q, k, v are targets.
    pub fn freeze(&mut self, sites: &[Site]) {
        for m in &mut self.modules {
            for (p, (site, _)) in m.parts.iter().enumerate() {
                if sites.contains(site) {
                    m.frozen[p] = true;
                }
            }
        }
    }

    /// The sites frozen in any module (what [`GpuLora::freeze`] was given, as far as it applied).
    pub fn frozen_sites(&self) -> Vec<Site> {
        let mut out = Vec::new();
        for m in &self.modules {
            for ((site, _), &f) in m.parts.iter().zip(&m.frozen) {
                if f && !out.contains(site) {
                    out.push(*site);
                }
            }
        }
        out
    }

    /// The adapter part at (block, site): (module, part index).
    pub fn at(&self, block: usize, site: Site) -> Option<(&LoraModule, usize)> {
        self.index.get(&(block, site)).map(|&(m, p)| (&self.modules[m], p))
    }

    /// The largest rank of any module (0 without modules).
    pub fn max_rank(&self) -> usize {
        self.modules.iter().map(|m| m.rank).max().unwrap_or(0)
    }

    /// Read A and the (reassembled) B of every module: (module, A, B).
    async fn read_pairs(&self, ctx: &GpuContext, grads: bool) -> Result<Vec<(String, HostTensor, HostTensor)>, GpuError> {
        let mut out = Vec::new();
        for m in &self.modules {
            let a_t = if grads { &m.a.grad } else { &m.a.value };
            let a = ctx.read(a_t).await?;
            let mut b = Vec::new();
            let mut rows = 0;
            for (_, p) in &m.parts {
                let t = if grads { &p.grad } else { &p.value };
                b.extend(ctx.read(t).await?);
                rows += t.shape[0];
            }
            out.push((
                m.name.clone(),
                HostTensor::new(a, vec![m.rank, m.in_dim]),
                HostTensor::new(b, vec![rows, m.rank]),
            ));
        }
        Ok(out)
    }

    /// The current A and B as a PEFT [`Adapter`] (same module paths, config and scales).
    pub async fn to_adapter(&self, ctx: &GpuContext) -> Result<Adapter, GpuError> {
        let mut modules = BTreeMap::new();
        let scales: HashMap<&str, f32> = self.modules.iter().map(|m| (m.name.as_str(), m.scale)).collect();
        for (name, a, b) in self.read_pairs(ctx, false).await? {
            let scale = scales[name.as_str()];
            modules.insert(name, LoraPair { a, b, scale });
        }
        Ok(Adapter { config: self.config.clone(), modules })
    }

    /// The gradients of the last backward pass, keyed like PEFT's saved tensors
    /// (`base_model.model.<module>.lora_A.weight` / `.lora_B.weight`).
    pub async fn read_grads(&self, ctx: &GpuContext) -> Result<BTreeMap<String, HostTensor>, GpuError> {
        let mut out = BTreeMap::new();
        for (name, a, b) in self.read_pairs(ctx, true).await? {
            out.insert(format!("{PREFIX}{name}.lora_A.weight"), a);
            out.insert(format!("{PREFIX}{name}.lora_B.weight"), b);
        }
        Ok(out)
    }
}
