//! Which linear layer of a block an adapter part feeds ([`Site`]), and the one table ([`SITES`]) that
//! names every site: its short name, the user's target that adapts it and its PEFT module in each
//! architecture. PEFT module paths ([`module_sites`]), the targets' `target_modules` entries and
//! paths ([`Target::module`]), the training state's `frozen` names and the layers of host and GPU
//! blocks ([`Site::linear_mut`], [`Site::linear`]) all come from here, so a new site or
//! architecture is added in this file only.

use super::options::Target;
use crate::model::{Arch, Block, Config, GpuBlock, GpuLinear, GpuMlp, Linear, Mlp};

/// Which linear layer of a block an adapter part feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    Q,
    K,
    V,
    O,
    /// GPT-2's mlp.c_fc.
    Fc,
    /// GPT-2's mlp.c_proj.
    Proj,
    Gate,
    Up,
    Down,
}

/// (site, short name, target, GPT-2 module, Llama module).
type Row = (Site, &'static str, Target, Option<&'static str>, Option<&'static str>);

/// One row per site. The name is what `training_state.safetensors` stores (its `frozen` metadata),
/// so it must never change. The module is the PEFT path inside a block (after `transformer.h.N.` or
/// `model.layers.N.`), None where the architecture has no such layer; sites sharing a module (GPT-2's
/// fused c_attn) split its B rows in this table's order.
#[rustfmt::skip]
const SITES: [Row; 9] = [
    // site      name    target        GPT-2                Llama
    (Site::Q,    "q",    Target::Q,    Some("attn.c_attn"), Some("self_attn.q_proj")),
    (Site::K,    "k",    Target::K,    Some("attn.c_attn"), Some("self_attn.k_proj")),
    (Site::V,    "v",    Target::V,    Some("attn.c_attn"), Some("self_attn.v_proj")),
    (Site::O,    "o",    Target::O,    Some("attn.c_proj"), Some("self_attn.o_proj")),
    (Site::Fc,   "fc",   Target::Up,   Some("mlp.c_fc"),    None),
    (Site::Proj, "proj", Target::Down, Some("mlp.c_proj"),  None),
    (Site::Gate, "gate", Target::Gate, None,                Some("mlp.gate_proj")),
    (Site::Up,   "up",   Target::Up,   None,                Some("mlp.up_proj")),
    (Site::Down, "down", Target::Down, None,                Some("mlp.down_proj")),
];

/// A row's module in `arch` (the one place that picks an architecture's column).
fn module_in(row: &Row, arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Gpt2 => row.3,
        Arch::Llama => row.4,
    }
}

/// Block `i`'s module path prefix, as each architecture's checkpoints spell it.
pub(super) fn block_path(arch: Arch, i: usize) -> String {
    match arch {
        Arch::Gpt2 => format!("transformer.h.{i}"),
        Arch::Llama => format!("model.layers.{i}"),
    }
}

/// The sites (in B's row order) of the module named `name` inside a block of `arch`.
fn sites_of(arch: Arch, name: &str) -> Vec<Site> {
    SITES.iter().filter(|r| module_in(r, arch) == Some(name)).map(|r| r.0).collect()
}

/// The block index and the sites (in B's row order) that a PEFT module path names
/// (used by the CPU merge and by the GPU trainer).
pub fn module_sites(arch: Arch, module: &str) -> Option<(usize, Vec<Site>)> {
    let path = module.strip_prefix("transformer.").or_else(|| module.strip_prefix("model.")).unwrap_or(module);
    let rest = path.strip_prefix("h.").or_else(|| path.strip_prefix("layers."))?;
    let (index, name) = rest.split_once('.')?;
    let index = index.parse::<usize>().ok()?;
    let sites = sites_of(arch, name);
    (!sites.is_empty()).then_some((index, sites))
}

/// The module inside a block of `arch` that adapts `target` (None where it has no such layer).
pub(super) fn target_module(target: Target, arch: Arch) -> Option<&'static str> {
    SITES.iter().filter(|r| r.2 == target).find_map(|r| module_in(r, arch))
}

/// The sites of `arch` that `target` adapts.
pub(super) fn target_sites(target: Target, arch: Arch) -> Vec<Site> {
    SITES.iter().filter(|r| r.2 == target && module_in(r, arch).is_some()).map(|r| r.0).collect()
}

/// The shortest tail of `module` (whole dotted parts) that names no other module of `arch`: PEFT's
/// `target_modules` spelling (`q_proj`, `c_attn`, but `attn.c_proj` beside `mlp.c_proj`).
pub(super) fn short_module(arch: Arch, module: &'static str) -> &'static str {
    let others: Vec<&str> = SITES.iter().filter_map(|r| module_in(r, arch)).filter(|&m| m != module).collect();
    let unique = |tail: &str| !others.iter().any(|o| *o == tail || o.ends_with(&format!(".{tail}")));
    let mut tails = module.char_indices().rev().filter(|&(_, c)| c == '.').map(|(i, _)| &module[i + 1..]);
    tails.find(|t| unique(t)).unwrap_or(module)
}

/// `block.<field>` for a site, for the host's [`Block`]/[`Mlp`] and the GPU's [`GpuBlock`]/[`GpuMlp`]
/// alike (`$r` is `&` or `&mut`): the block layout is written once for both.
macro_rules! layer_at {
    ($site:expr, $block:expr, $mlp:ident, $($r:tt)+) => {
        Some(match ($site, $($r)+ $block.mlp) {
            (Site::Q, _) => $($r)+ $block.q,
            (Site::K, _) => $($r)+ $block.k,
            (Site::V, _) => $($r)+ $block.v,
            (Site::O, _) => $($r)+ $block.o,
            (Site::Fc, $mlp::Gelu { fc, .. }) => fc,
            (Site::Proj, $mlp::Gelu { proj, .. }) => proj,
            (Site::Gate, $mlp::SwiGlu { gate, .. }) => gate,
            (Site::Up, $mlp::SwiGlu { up, .. }) => up,
            (Site::Down, $mlp::SwiGlu { down, .. }) => down,
            _ => return None,
        })
    };
}

impl Site {
    /// The short name (`q`, `fc`, …), as `training_state.safetensors` records frozen sites.
    pub fn name(self) -> &'static str {
        SITES.iter().find(|r| r.0 == self).map(|r| r.1).expect("every site has a row")
    }

    /// The site with this short name.
    pub fn from_name(name: &str) -> Option<Site> {
        SITES.iter().find(|r| r.1 == name).map(|r| r.0)
    }

    /// Input width of the layer at this site.
    pub fn in_dim(self, c: &Config) -> usize {
        match self {
            Site::Q | Site::K | Site::V | Site::Fc | Site::Gate | Site::Up => c.hidden_size,
            Site::O => c.q_dim(),
            Site::Proj | Site::Down => c.intermediate_size,
        }
    }

    /// Output width of the layer at this site.
    pub fn out_dim(self, c: &Config) -> usize {
        match self {
            Site::Q => c.q_dim(),
            Site::K | Site::V => c.kv_dim(),
            Site::O | Site::Proj | Site::Down => c.hidden_size,
            Site::Fc | Site::Gate | Site::Up => c.intermediate_size,
        }
    }

    /// The frozen layer of `block` at this site (None when the block's MLP has no such layer).
    pub fn linear(self, block: &GpuBlock) -> Option<&GpuLinear> {
        layer_at!(self, block, GpuMlp, &)
    }

    /// The layer of a host-side `block` at this site (None when its MLP has no such layer).
    pub fn linear_mut(self, block: &mut Block) -> Option<&mut Linear> {
        layer_at!(self, block, Mlp, &mut)
    }
}

/// The (in, out) features of the module `module` inside a block of `arch`: B stacks its sites' rows.
pub(super) fn module_dims(arch: Arch, module: &str, c: &Config) -> Option<(usize, usize)> {
    let sites = sites_of(arch, module);
    let first = sites.first()?;
    Some((first.in_dim(c), sites.iter().map(|s| s.out_dim(c)).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Site; 9] = [Site::Q, Site::K, Site::V, Site::O, Site::Fc, Site::Proj, Site::Gate, Site::Up, Site::Down];

    /// The names are a file format (training state) and PEFT's spelling: pinned here.
    #[test]
    fn names_are_fixed() {
        let names: Vec<&str> = ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names, ["q", "k", "v", "o", "fc", "proj", "gate", "up", "down"]);
        assert!(ALL.iter().all(|&s| Site::from_name(s.name()) == Some(s)));
        assert_eq!(Site::from_name("c_attn"), None);

        let gpt2 = |m: &str| module_sites(Arch::Gpt2, &format!("transformer.h.3.{m}"));
        assert_eq!(gpt2("attn.c_attn"), Some((3, vec![Site::Q, Site::K, Site::V])));
        assert_eq!(gpt2("attn.c_proj"), Some((3, vec![Site::O])));
        assert_eq!(gpt2("mlp.c_fc"), Some((3, vec![Site::Fc])));
        assert_eq!(gpt2("mlp.c_proj"), Some((3, vec![Site::Proj])));
        assert_eq!(gpt2("mlp.up_proj"), None);
        for (m, s) in [("self_attn.q_proj", Site::Q), ("self_attn.o_proj", Site::O), ("mlp.gate_proj", Site::Gate), ("mlp.down_proj", Site::Down)] {
            assert_eq!(module_sites(Arch::Llama, &format!("model.layers.0.{m}")), Some((0, vec![s])));
        }
        assert_eq!(module_sites(Arch::Llama, "model.layers.0.attn.c_attn"), None);
        assert_eq!(module_sites(Arch::Llama, "model.layers.x.self_attn.q_proj"), None);

        let short = |arch, t| target_module(t, arch).map(|m| short_module(arch, m));
        let gpt2: Vec<_> = Target::ALL.iter().map(|&t| short(Arch::Gpt2, t)).collect();
        assert_eq!(gpt2, [Some("c_attn"), Some("c_attn"), Some("c_attn"), Some("attn.c_proj"), Some("c_fc"), None, Some("mlp.c_proj")]);
        let llama: Vec<_> = Target::ALL.iter().map(|&t| short(Arch::Llama, t).unwrap()).collect();
        assert_eq!(llama, ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj", "down_proj"]);
    }
}
