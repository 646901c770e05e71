//! Where the GPU time goes: GPU time per kernel kind over the recordings of one piece of work (a
//! training step, a generated token).
//!
//! Every dispatch is tagged with its kind once, where its pipeline is made: [`GpuContext::pipeline`]
//! returns a [`Pipeline`] that carries the [`Kind`] of its shader's name ([`Kind::of`]), and
//! [`Recorder::dispatch`](super::Recorder) reads it. No launcher names its kind.
//!
//! Between [`GpuContext::start_profile`] and [`GpuContext::finish_profile`] every `run` /
//! `run_cached` records each dispatch in a compute pass of its own and
//! - with `Features::TIMESTAMP_QUERY` (Vulkan, Metal, DX12, lavapipe; Chrome with the
//!   'timestamp-query' feature) writes GPU timestamps at the pass's beginning and end: GPU time;
//! - without it submits each dispatch (and each buffer copy) on its own and waits for it: wall time
//!   per dispatch, submission and wait included, labelled [`TimeSource::WallPerDispatch`].
//!
//! Both change how the work is submitted, not what it computes.

use std::collections::BTreeMap;

/// What a kernel does, for the profile's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Kind {
    Matmul,
    Matvec,
    Attention,
    Norms,
    Elementwise,
    Embedding,
    CrossEntropy,
    /// sum_squares: the gradient's global norm.
    Reductions,
    AdamW,
    /// topk: choosing the next token.
    Sampling,
    Other,
}

impl Kind {
    /// The kind of the kernel whose pipeline is named `shader` (its `shaders/<name>.wgsl`, with
    /// a `_<format>` suffix for the weight-reading ones).
    pub fn of(shader: &str) -> Kind {
        let is = |prefix: &str| shader == prefix || shader.starts_with(&format!("{prefix}_"));
        if is("matmul") {
            Kind::Matmul
        } else if is("matvec") {
            Kind::Matvec
        } else if is("attention") {
            Kind::Attention
        } else if is("layernorm") || is("rmsnorm") || is("residual_norm") {
            Kind::Norms
        } else if ["add", "scale", "gelu", "silu_mul", "rope", "dropout"].iter().any(|p| is(p)) {
            Kind::Elementwise
        } else if is("embedding") {
            Kind::Embedding
        } else if is("cross_entropy") {
            Kind::CrossEntropy
        } else if is("sum_squares") {
            Kind::Reductions
        } else if is("adamw") {
            Kind::AdamW
        } else if is("topk") {
            Kind::Sampling
        } else {
            Kind::Other
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Matmul => "matmul",
            Kind::Matvec => "matvec",
            Kind::Attention => "attention",
            Kind::Norms => "norms",
            Kind::Elementwise => "elementwise",
            Kind::Embedding => "embedding",
            Kind::CrossEntropy => "cross-entropy",
            Kind::Reductions => "reductions",
            Kind::AdamW => "adamw",
            Kind::Sampling => "sampling",
            Kind::Other => "other",
        }
    }
}

/// A compute pipeline and the kind of its kernel (derefs to the wgpu pipeline).
#[derive(Clone)]
pub struct Pipeline {
    pub(crate) inner: wgpu::ComputePipeline,
    pub kind: Kind,
}

impl std::ops::Deref for Pipeline {
    type Target = wgpu::ComputePipeline;
    fn deref(&self) -> &wgpu::ComputePipeline {
        &self.inner
    }
}

/// How the times were taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TimeSource {
    /// GPU timestamps at the beginning and end of each dispatch's pass.
    GpuTimestamps,
    /// No timestamp queries on this device: each dispatch submitted alone and waited for (wall
    /// time, submission and wait included: an upper bound of its GPU time).
    WallPerDispatch,
}

impl TimeSource {
    pub fn label(self) -> &'static str {
        match self {
            TimeSource::GpuTimestamps => "GPU time (timestamp queries)",
            TimeSource::WallPerDispatch => "wall time per dispatch (no timestamp queries on this GPU)",
        }
    }
}

/// One kind's share.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct KindTime {
    pub kind: Kind,
    pub dispatches: usize,
    pub ms: f64,
}

/// The profile of the work between `start_profile` and `finish_profile`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Profile {
    pub source: TimeSource,
    /// Kinds with at least one dispatch, most time first.
    pub kinds: Vec<KindTime>,
    /// Buffer copies (wall mode times them on their own; with timestamps they are not timed).
    pub copies: usize,
    pub copy_ms: f64,
    /// Command submissions made (one per `run`, or one per dispatch and copy in wall mode).
    pub submits: usize,
}

impl Profile {
    pub fn dispatches(&self) -> usize {
        self.kinds.iter().map(|k| k.dispatches).sum()
    }

    /// Time of the dispatches (copies excluded).
    pub fn total_ms(&self) -> f64 {
        self.kinds.iter().map(|k| k.ms).sum()
    }

    /// `(kind, dispatches, ms, share of total %)` rows as text, one per line.
    pub fn table(&self) -> String {
        let total = self.total_ms().max(f64::MIN_POSITIVE);
        let mut out = format!("{:<14} {:>10} {:>10} {:>7}\n", "kind", "dispatches", "ms", "share");
        for k in &self.kinds {
            out += &format!("{:<14} {:>10} {:>10.3} {:>6.1}%\n", k.kind.label(), k.dispatches, k.ms, 100.0 * k.ms / total);
        }
        out += &format!("{:<14} {:>10} {:>10.3}   ({})\n", "total", self.dispatches(), self.total_ms(), self.source.label());
        if self.copies > 0 {
            out += &format!("{:<14} {:>10} {:>10}\n", "buffer copies", self.copies, if self.source == TimeSource::WallPerDispatch { format!("{:.3}", self.copy_ms) } else { "–".into() });
        }
        out
    }
}

/// What the context gathers while profiling.
#[derive(Default)]
pub(crate) struct Tally {
    per_kind: BTreeMap<Kind, (usize, f64)>,
    copies: usize,
    copy_ms: f64,
    submits: usize,
}

impl Tally {
    pub(crate) fn add(&mut self, kind: Kind, ms: f64) {
        let e = self.per_kind.entry(kind).or_default();
        e.0 += 1;
        e.1 += ms.max(0.0);
    }

    pub(crate) fn add_copy(&mut self, ms: f64) {
        self.copies += 1;
        self.copy_ms += ms.max(0.0);
    }

    pub(crate) fn merge(&mut self, other: Tally) {
        for (kind, (n, ms)) in other.per_kind {
            let e = self.per_kind.entry(kind).or_default();
            e.0 += n;
            e.1 += ms;
        }
        self.copies += other.copies;
        self.copy_ms += other.copy_ms;
        self.submits += other.submits;
    }

    pub(crate) fn submitted(&mut self, n: usize) {
        self.submits += n;
    }

    pub(crate) fn finish(self, source: TimeSource) -> Profile {
        let mut kinds: Vec<KindTime> = self.per_kind.into_iter().map(|(kind, (dispatches, ms))| KindTime { kind, dispatches, ms }).collect();
        kinds.sort_by(|a, b| b.ms.total_cmp(&a.ms).then(a.kind.cmp(&b.kind)));
        Profile { source, kinds, copies: self.copies, copy_ms: self.copy_ms, submits: self.submits }
    }
}

/// Timestamp queries per query set (wgpu's `QUERY_SET_MAX_QUERIES`): two per dispatch.
pub(crate) const QUERIES_PER_SET: u32 = 4096;

/// A recording's profiling state (inside `Recorder`).
pub(crate) enum Probe {
    /// Query sets of 2 timestamps per dispatch, the kind of each dispatch in order.
    Timestamps { sets: Vec<wgpu::QuerySet>, kinds: Vec<Kind> },
    /// One command buffer per dispatch (`Some(kind)`) or copy (`None`), submitted one at a time.
    Wall { pieces: Vec<(Option<Kind>, wgpu::CommandBuffer)> },
}

/// Milliseconds from a monotonic clock (natively `Instant`, in the browser `performance.now()`).
#[cfg(not(target_arch = "wasm32"))]
pub fn now_ms() -> f64 {
    use std::sync::OnceLock;
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64() * 1e3
}

#[cfg(target_arch = "wasm32")]
pub fn now_ms() -> f64 {
    use wasm_bindgen::{JsCast, JsValue};
    js_sys::Reflect::get(&js_sys::global(), &JsValue::from_str("performance"))
        .ok()
        .and_then(|p| p.dyn_into::<web_sys::Performance>().ok())
        .map_or(0.0, |p| p.now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_has_a_kind() {
        let names = [
            ("matmul_q4_1", Kind::Matmul),
            ("matvec_f32", Kind::Matvec),
            ("attention", Kind::Attention),
            ("attention_backward", Kind::Attention),
            ("layernorm_backward", Kind::Norms),
            ("rmsnorm", Kind::Norms),
            ("residual_norm", Kind::Norms),
            ("silu_mul_backward", Kind::Elementwise),
            ("gelu", Kind::Elementwise),
            ("rope", Kind::Elementwise),
            ("dropout", Kind::Elementwise),
            ("cross_entropy_backward", Kind::CrossEntropy),
            ("sum_squares", Kind::Reductions),
            ("adamw", Kind::AdamW),
            ("topk", Kind::Sampling),
            ("embedding", Kind::Embedding),
        ];
        for (name, kind) in names {
            assert_eq!(Kind::of(name), kind, "{name}");
        }
        // Every kernel in shaders/ (not the composed parts) is named in the list above.
        let parts = ["matmul_params", "prelude_1d", "stage_norm", "workgroup_reduce"];
        for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders")).unwrap() {
            let file = entry.unwrap().file_name().into_string().unwrap();
            let stem = file.trim_end_matches(".wgsl");
            if stem.starts_with("weight_") || parts.contains(&stem) {
                continue;
            }
            assert_ne!(Kind::of(stem), Kind::Other, "shaders/{file} has no kind in gpu::profile::Kind::of");
        }
        assert_eq!(Kind::of("addition_of_something"), Kind::Other);
    }

    #[test]
    fn tally_sums_per_kind_most_time_first() {
        let mut t = Tally::default();
        t.add(Kind::Norms, 1.0);
        t.add(Kind::Matmul, 2.0);
        t.add(Kind::Matmul, 3.0);
        t.add_copy(0.5);
        let p = t.finish(TimeSource::GpuTimestamps);
        assert_eq!(p.kinds, vec![KindTime { kind: Kind::Matmul, dispatches: 2, ms: 5.0 }, KindTime { kind: Kind::Norms, dispatches: 1, ms: 1.0 }]);
        assert_eq!((p.dispatches(), p.total_ms(), p.copies), (3, 6.0, 1));
        assert!(p.table().contains("matmul"));
    }
}
