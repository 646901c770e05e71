//! New adapters from user settings (rather than from PEFT files): which layers, rank, α, rsLoRA,
//! per-target ranks, PEFT's initialisation and a seed.
//!
//! Targets are named by role — `q,k,v,o,up,gate,down` — and mapped to each architecture's modules:
//!
//! | target | Llama family (`model.layers.N.…`) | GPT-2 (`transformer.h.N.…`) |
//! |--------|-----------------------------------|-----------------------------|
//! | q, k, v | `self_attn.{q,k,v}_proj`        | `attn.c_attn` (fused, see below) |
//! | o      | `self_attn.o_proj`                | `attn.c_proj`               |
//! | up     | `mlp.up_proj`                     | `mlp.c_fc`                  |
//! | gate   | `mlp.gate_proj`                   | — (an error: GPT-2's MLP has no gate) |
//! | down   | `mlp.down_proj`                   | `mlp.c_proj`                |
//!
//! GPT-2 computes q, k and v with one Conv1D, `c_attn`, and PEFT can only adapt whole modules, so any
//! of q, k, v gives one `c_attn` adapter of rank r (A [r, d], B [3d, r]), which is what PEFT itself
//! makes for `target_modules=["c_attn"]`. When only some of q, k, v are chosen, the B rows of the
//! others start at zero and stay zero (their gradient is masked: [`LoraOptions::frozen`] names them
//! and the trainer freezes them), so the saved c_attn adapter changes only the chosen projections
//! and still loads in PEFT as a plain c_attn adapter.
//!
//! Initialisation follows PEFT: by default (`init_lora_weights=True`) A is Kaiming-uniform with
//! a = √5, i.e. U(−1/√in, 1/√in), and B = 0; `gaussian` draws A ~ N(0, σ = 1/r) (PEFT's
//! `nn.init.normal_(A, std=1/r)`) and B = 0. Either way the new adapter starts as the identity
//! (ΔW = s·B·A = 0). Values come from [`crate::rng::Rng`] with the seed, module after module in name
//! order, A row-major, so one seed gives one adapter natively and in wasm. `dropout` is PEFT's
//! `lora_dropout` (off by default): see `shaders/dropout.wgsl` for how the trainer applies it.

use std::collections::BTreeMap;

use super::site::{self, Site};
use super::{Adapter, LoraConfig, LoraError, LoraPair};
use crate::model::{Arch, Config, HostTensor};
use crate::rng::Rng;

/// A layer role a user can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Q,
    K,
    V,
    O,
    Up,
    Gate,
    Down,
}

impl Target {
    pub const ALL: [Target; 7] = [Target::Q, Target::K, Target::V, Target::O, Target::Up, Target::Gate, Target::Down];

    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Up => "up",
            Target::Gate => "gate",
            Target::Down => "down",
        }
    }

    pub fn parse(s: &str) -> Result<Self, LoraError> {
        let s = s.trim().to_ascii_lowercase();
        Self::ALL.into_iter().find(|t| t.name() == s).ok_or_else(|| {
            LoraError::Options(format!("`{s}` is not a target: choose among q, k, v, o, up, gate, down"))
        })
    }

    /// Parse a comma-separated list (`q,v`), without repeats, in the order given.
    pub fn parse_list(s: &str) -> Result<Vec<Self>, LoraError> {
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let t = Self::parse(part)?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.is_empty() {
            return Err(LoraError::Options("no target given: choose among q, k, v, o, up, gate, down".into()));
        }
        Ok(out)
    }

    /// The PEFT `target_modules` entry (the module path's shortest unambiguous tail) for this role
    /// in `arch`; the names come from the site table (`site.rs`).
    pub fn module(self, arch: Arch) -> Result<&'static str, LoraError> {
        Ok(site::short_module(arch, self.block_module(arch)?))
    }

    /// The layers this role adapts in `arch` (GPT-2's up is c_fc, its down c_proj).
    pub fn sites(self, arch: Arch) -> Vec<Site> {
        site::target_sites(self, arch)
    }

    /// The module inside a block of `arch` (e.g. `self_attn.q_proj`), or why there is none.
    fn block_module(self, arch: Arch) -> Result<&'static str, LoraError> {
        site::target_module(self, arch).ok_or_else(|| {
            LoraError::Options(match (arch, self) {
                (Arch::Gpt2, Target::Gate) => {
                    "GPT-2's MLP has no gate projection (it is c_fc → GELU → c_proj): target up and down instead".into()
                }
                _ => format!("this model has no `{}` layer", self.name()),
            })
        })
    }

    /// The module path inside block `i` (e.g. `model.layers.3.self_attn.q_proj`).
    fn path(self, arch: Arch, i: usize) -> Result<String, LoraError> {
        Ok(format!("{}.{}", site::block_path(arch, i), self.block_module(arch)?))
    }

    /// (in, out) features of this role's module (for GPT-2's q, k, v: all of c_attn).
    fn dims(self, c: &Config) -> Result<(usize, usize), LoraError> {
        Ok(site::module_dims(c.arch, self.block_module(c.arch)?, c).expect("a target's module has sites"))
    }
}

/// How A starts (B always starts at zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// PEFT's default: Kaiming-uniform (a = √5): U(−1/√in, 1/√in).
    #[default]
    Kaiming,
    /// PEFT's `init_lora_weights="gaussian"`: N(0, σ = 1/r).
    Gaussian,
}

/// What a user chooses for a new adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f32,
    pub rslora: bool,
    pub targets: Vec<Target>,
    /// Per-target rank (PEFT's `rank_pattern`); α stays `alpha` for every target.
    pub rank_override: BTreeMap<Target, usize>,
    pub init: Init,
    pub seed: u64,
    /// Probability of zeroing each adapter input while training (PEFT's `lora_dropout`), in [0, 1).
    pub dropout: f32,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            rslora: false,
            targets: vec![Target::Q, Target::V],
            rank_override: BTreeMap::new(),
            init: Init::Kaiming,
            seed: 0,
            dropout: 0.0,
        }
    }
}

impl LoraOptions {
    /// GPT-2's fused c_attn: the q/k/v roles not chosen when some are (their B rows stay zero).
    /// Empty for the Llama family, or when none or all of q, k, v are targets.
    pub fn frozen(&self, arch: Arch) -> Vec<Target> {
        let qkv = [Target::Q, Target::K, Target::V];
        if arch != Arch::Gpt2 || !qkv.iter().any(|t| self.targets.contains(t)) {
            return Vec::new();
        }
        qkv.into_iter().filter(|t| !self.targets.contains(t)).collect()
    }
}

impl LoraConfig {
    /// The PEFT config of a new adapter with `opts` on a model with config `model`.
    pub fn from_options(model: &Config, opts: &LoraOptions) -> Result<Self, LoraError> {
        if opts.rank == 0 {
            return Err(LoraError::Options("the rank must be at least 1".into()));
        }
        if !(opts.alpha.is_finite() && opts.alpha > 0.0) {
            return Err(LoraError::Options(format!("alpha must be a positive number, got {}", opts.alpha)));
        }
        if opts.targets.is_empty() {
            return Err(LoraError::Options("no target given: choose among q, k, v, o, up, gate, down".into()));
        }
        if !(0.0..1.0).contains(&opts.dropout) {
            return Err(LoraError::Options(format!("dropout must be at least 0 and below 1, got {}", opts.dropout)));
        }
        let mut target_modules: Vec<String> = Vec::new();
        for t in &opts.targets {
            let m = t.module(model.arch)?.to_string();
            if !target_modules.contains(&m) {
                target_modules.push(m);
            }
        }
        let mut rank_pattern: BTreeMap<String, usize> = BTreeMap::new();
        for (t, &r) in &opts.rank_override {
            if r == 0 {
                return Err(LoraError::Options(format!("the rank of {} must be at least 1", t.name())));
            }
            if !opts.targets.contains(t) {
                return Err(LoraError::Options(format!("a rank is given for {}, which is not a target", t.name())));
            }
            let m = t.module(model.arch)?.to_string();
            if let Some(&other) = rank_pattern.get(&m) {
                if other != r {
                    return Err(LoraError::Options(format!(
                        "q, k and v share GPT-2's fused c_attn adapter, so they need one rank (got {other} and {r})"
                    )));
                }
            }
            if r != opts.rank {
                rank_pattern.insert(m, r);
            }
        }
        // A rank above min(in, out) adds parameters but no expressiveness (B·A is at most that
        // rank), and a huge one only exhausts memory: refused before anything is allocated.
        for &t in &opts.targets {
            let (in_dim, out_dim) = t.dims(model)?;
            let r = opts.rank_override.get(&t).copied().unwrap_or(opts.rank);
            let most = in_dim.min(out_dim);
            if r > most {
                return Err(LoraError::Options(format!(
                    "rank {r} is more than {} can use: its layer maps {in_dim} features to {out_dim}, so B·A has rank at most {most}; use a rank of at most {most}",
                    t.name()
                )));
            }
        }
        Ok(Self {
            r: opts.rank,
            lora_alpha: opts.alpha,
            use_rslora: opts.rslora,
            target_modules,
            rank_pattern,
            alpha_pattern: BTreeMap::new(),
            fan_in_fan_out: model.arch == Arch::Gpt2,
            lora_dropout: opts.dropout,
            base_model_name_or_path: None,
        })
    }
}

/// A standard normal value (Box–Muller).
fn normal(rng: &mut Rng) -> f32 {
    let u1 = 1.0 - rng.next_f32(); // (0, 1]
    let u2 = rng.next_f32();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

impl Adapter {
    /// A new adapter (B = 0, so the model is unchanged) on every block of a model with config
    /// `model`, for the options' targets; see the module docs for the mapping and initialisation.
    pub fn from_options(model: &Config, opts: &LoraOptions) -> Result<Self, LoraError> {
        let config = LoraConfig::from_options(model, opts)?;
        let mut shapes: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for &t in &opts.targets {
            for i in 0..model.num_layers {
                shapes.insert(t.path(model.arch, i)?, t.dims(model)?);
            }
        }
        let mut rng = Rng::new(opts.seed);
        let mut modules = BTreeMap::new();
        for (name, (in_dim, out_dim)) in shapes {
            let r = config.rank_for(&name);
            let a: Vec<f32> = match opts.init {
                Init::Kaiming => {
                    let bound = 1.0 / (in_dim as f32).sqrt();
                    (0..r * in_dim).map(|_| rng.uniform(-bound, bound)).collect()
                }
                Init::Gaussian => (0..r * in_dim).map(|_| normal(&mut rng) / r as f32).collect(),
            };
            let pair = LoraPair {
                a: HostTensor::new(a, vec![r, in_dim]),
                b: HostTensor::new(vec![0.0; out_dim * r], vec![out_dim, r]),
                scale: config.scale_for(&name),
            };
            modules.insert(name, pair);
        }
        Ok(Self { config, modules })
    }
}
