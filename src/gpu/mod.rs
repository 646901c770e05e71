//! The GPU side of the engine: one [`GpuContext`] (adapter + device + queue + pipeline cache),
//! [`GpuTensor`] (a storage buffer with a shape), typed [`GpuError`]s, and one launcher module per
//! shader in `shaders/`. The same code runs natively (Vulkan/Metal/DX12; Mesa lavapipe on CI) and in
//! the browser (WebGPU), so everything here is async and never blocks the page.

mod context;
mod tensor;

pub mod adamw;
pub mod add;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod gelu;
pub mod layernorm;
pub mod matmul;
pub mod matvec;
pub mod matvec_pair;
pub mod matvec_qkv;
pub mod profile;
pub mod rmsnorm;
pub mod residual_norm;
pub mod rope;
pub mod scale;
pub mod silu_mul;
pub mod sum_squares;
pub mod topk;
pub mod tune;

pub use context::{AdapterSummary, DispatchCache, GpuContext, Recorder};
pub use tensor::{GpuTensor, MemoryCounter};

/// Everything that can go wrong on the GPU, as a sentence saying what happened and what to do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GpuError {
    #[error(
        "WebGPU is not available in this browser. Use Chrome or Edge 113+ (on Linux start it with \
         --enable-unsafe-webgpu --enable-features=Vulkan), Safari 26+, or Firefox 141+ on Windows \
         (Firefox Nightly elsewhere, with dom.webgpu.enabled set in about:config)."
    )]
    WebGpuUnavailable,
    #[error(
        "no GPU adapter was found ({0}). Install a GPU driver; on a machine without a GPU install \
         Mesa's software Vulkan driver (Debian/Ubuntu: mesa-vulkan-drivers)."
    )]
    NoAdapter(String),
    #[error("the GPU refused to open a device: {0}")]
    RequestDevice(String),
    #[error("the GPU rejected a command (a bug in loratab, please report it): {0}")]
    Validation(String),
    #[error("the GPU ran out of memory: {0}. Use a smaller model, batch or sequence length.")]
    OutOfMemory(String),
    #[error("the GPU reported an internal error: {0}")]
    Internal(String),
    #[error(
        "the GPU device was lost ({0}). This happens when the driver resets or the tab was in the \
         background too long; reload to start a new device."
    )]
    DeviceLost(String),
    #[error(
        "{what} needs {bytes} bytes, more than this GPU allows in one buffer ({limit} bytes). \
         Use a smaller model or shorter sequences."
    )]
    TooLarge { what: String, bytes: u64, limit: u64 },
    #[error("shape mismatch in {op}: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("reading results back from the GPU failed: {0}")]
    Readback(String),
}

impl From<wgpu::Error> for GpuError {
    fn from(e: wgpu::Error) -> Self {
        match e {
            wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
            wgpu::Error::Validation { description, .. } => GpuError::Validation(description),
            wgpu::Error::Internal { description, .. } => GpuError::Internal(description),
        }
    }
}

/// Threads per workgroup of the one-dimensional (element-wise, reduction) kernels. The element-wise
/// kernels receive it as the `WORKGROUP` override of `shaders/prelude_1d.wgsl` (see [`launch_1d`]).
/// Cross-entropy and sum_squares still say 256 in WGSL (`shaders/workgroup_reduce.wgsl`'s `WG`
/// override defaults to it; the norms and attention set it, [`row_workgroup`]); they must stay
/// equal to this.
pub(crate) const WORKGROUP_1D: u32 = 256;
const _: () = assert!(WORKGROUP_1D == 256, "cross_entropy, sum_squares and workgroup_reduce.wgsl's default still hard-code 256 threads");

/// Threads per workgroup (the `WG` override of `shaders/workgroup_reduce.wgsl`) of a kernel that
/// runs one workgroup per row of `width` values (the norms; attention, whose rows are heads): 256 on
/// a GPU. On a CPU implementation (lavapipe, SwiftShader) invocations are SIMD lanes run in turn and
/// every barrier switches between all of them, so a workgroup costs what its threads cost whether
/// they have values or not: there the smallest power of two ≥ `width`, at least 32 (at most 256).
/// In the page on SwiftShader, batch 1 × 8 tokens on the default model, one attention dispatch took
/// 23 ms at 256 threads (BENCHMARKS.md, "The page's training step"). Fixed per model, not per
/// sequence length, so a model's sums run in the same order at every call.
pub(crate) fn row_workgroup(ctx: &GpuContext, width: usize) -> u32 {
    if ctx.is_cpu() {
        width.next_power_of_two().clamp(32, 256) as u32
    } else {
        256
    }
}

/// One kernel's pipeline name and WGSL source. The 1-D (element-wise) kernels: `name` keys its pipeline, `source` is the kernel's WGSL followed by
/// `shaders/prelude_1d.wgsl` (see [`kernel_1d!`]). Its entry point is `main`, its last binding the
/// uniform parameters.
pub(crate) struct Kernel1d {
    pub name: &'static str,
    pub source: &'static str,
}

/// `Kernel1d { name, source }` for `shaders/<name>.wgsl` composed with `shaders/prelude_1d.wgsl`.
macro_rules! kernel_1d {
    ($name:literal) => {
        $crate::gpu::Kernel1d {
            name: $name,
            source: concat!(
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/", $name, ".wgsl")),
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/prelude_1d.wgsl")),
            ),
        }
    };
}
pub(crate) use kernel_1d;

/// One kernel that reads a frozen weight, composed with each `shaders/weight_<format>.wgsl` (in
/// [`WeightFormat::ALL`](crate::model::WeightFormat::ALL)'s order): `[(pipeline name, source); 6]`,
/// the name being `<name>_<format>`. The kernel's other parts follow as further sources.
macro_rules! weight_kernels {
    ($name:literal, $kernel:expr $(, $more:expr)*) => {
        [
            weight_kernels!(@one $name, "f32", $kernel $(, $more)*),
            weight_kernels!(@one $name, "f16", $kernel $(, $more)*),
            weight_kernels!(@one $name, "bf16", $kernel $(, $more)*),
            weight_kernels!(@one $name, "q8_0", $kernel $(, $more)*),
            weight_kernels!(@one $name, "q4_0", $kernel $(, $more)*),
            weight_kernels!(@one $name, "q4_1", $kernel $(, $more)*),
        ]
    };
    (@one $name:literal, $format:literal, $kernel:expr $(, $more:expr)*) => {
        $crate::gpu::Kernel1d {
            name: concat!($name, "_", $format),
            source: concat!(
                $kernel,
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/shaders/weight_", $format, ".wgsl")),
                $($more,)*
            ),
        }
    };
}
pub(crate) use weight_kernels;

/// The variant of a [`weight_kernels!`] table for `format`.
/// Each weight format's seam (`weight_<format>.wgsl`), in [`WeightFormat::ALL`](crate::model::WeightFormat::ALL)'s order.
const WEIGHT_SEAMS: [&str; 6] = [
    include_str!("../../shaders/weight_f32.wgsl"),
    include_str!("../../shaders/weight_f16.wgsl"),
    include_str!("../../shaders/weight_bf16.wgsl"),
    include_str!("../../shaders/weight_q8_0.wgsl"),
    include_str!("../../shaders/weight_q4_0.wgsl"),
    include_str!("../../shaders/weight_q4_1.wgsl"),
];
const _: () = assert!(crate::model::WeightFormat::ALL.len() == WEIGHT_SEAMS.len());

/// Kernels that read several weights of one format, per format (`<name>_<format>`): `source`, then
/// for the first weight `per_weight` and the format's seam as they are (`weight`, binding 1), then
/// for each further (name, binding) of `more` the same two renamed (`weight` → name, binding 1 →
/// binding). The renaming is text, so it cannot be a `concat!`: composed once per kernel (cached by
/// the caller) and leaked, 'static like the `concat!`-built kernels.
pub(crate) fn multi_weight_kernels(name: &str, source: &str, per_weight: &str, more: &[(&str, u32)]) -> [Kernel1d; 6] {
    per_format(name, |i| {
        let first = format!("{per_weight}{}", WEIGHT_SEAMS[i]);
        let mut text = format!("{source}{first}");
        for &(weight, binding) in more {
            text += &renamed(&first, weight, binding);
        }
        text
    })
}

/// Kernels that read one weight under another name, per format (`<name>_<format>`): `source`,
/// then the format's seam renamed (`weight` → `weight_name`, binding 1 → `binding`), for a shader
/// whose binding 1 is something else.
pub(crate) fn renamed_weight_kernels(name: &str, source: &str, weight_name: &str, binding: u32) -> [Kernel1d; 6] {
    per_format(name, |i| format!("{source}{}", renamed(WEIGHT_SEAMS[i], weight_name, binding)))
}

/// `text` (a seam and what reads it) with `weight` renamed to `weight_name` and binding 1 to `binding`.
fn renamed(text: &str, weight_name: &str, binding: u32) -> String {
    text.replace("@binding(1)", &format!("@binding({binding})")).replace("weight", weight_name)
}

/// A kernel per weight format (`<name>_<format>`, source `text(i)` for format i of
/// [`WeightFormat::ALL`](crate::model::WeightFormat::ALL)), leaked: 'static like the
/// `concat!`-built kernels.
fn per_format(name: &str, text: impl Fn(usize) -> String) -> [Kernel1d; 6] {
    std::array::from_fn(|i| {
        let name = format!("{name}_{}", crate::model::WeightFormat::ALL[i].name());
        Kernel1d { name: Box::leak(name.into_boxed_str()), source: Box::leak(text(i).into_boxed_str()) }
    })
}

pub(crate) fn for_format(table: &[Kernel1d; 6], format: crate::model::WeightFormat) -> &Kernel1d {
    let i = crate::model::WeightFormat::ALL.iter().position(|&f| f == format).expect("ALL lists every format");
    &table[i]
}

/// `GpuError::Shape` for `op` unless `t` holds plain f32 values (only a weight operand may be packed).
pub(crate) fn check_f32(op: &'static str, what: &str, t: &GpuTensor) -> Result<(), GpuError> {
    if t.format != crate::model::WeightFormat::F32 {
        return Err(GpuError::Shape { op, detail: format!("{what} is stored as {}, but only a weight operand may be packed", t.format) });
    }
    Ok(())
}

/// Record one dispatch of the 1-D `kernel` over `n` items: `n` checked to fit a u32 (the shader
/// indexes with u32; `op` names the op in that error), nothing recorded for n = 0, the pipeline with
/// `WORKGROUP` = [`WORKGROUP_1D`], `params(n)` as the uniform bound after `buffers` (bindings 0, 1, …),
/// and the grid of [`grid_1d`] under [`GpuContext::max_workgroups_per_dim`].
pub(crate) fn launch_1d<P: bytemuck::Pod>(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    op: &'static str,
    kernel: &Kernel1d,
    n: usize,
    buffers: &[&wgpu::Buffer],
    params: impl FnOnce(u32) -> P,
) -> Result<(), GpuError> {
    launch_1d_entry(ctx, encoder, op, kernel, "main", n, buffers, &[], params)
}

/// [`launch_1d`] of another entry point of the kernel, with `after` bound after the uniform (the
/// bindings that entry point adds to `main`'s).
#[allow(clippy::too_many_arguments)]
pub(crate) fn launch_1d_entry<P: bytemuck::Pod>(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    op: &'static str,
    kernel: &Kernel1d,
    entry: &'static str,
    n: usize,
    buffers: &[&wgpu::Buffer],
    after: &[&wgpu::Buffer],
    params: impl FnOnce(u32) -> P,
) -> Result<(), GpuError> {
    let count = check_u32(op, "the element count", n)?;
    if count == 0 {
        return Ok(());
    }
    let pipeline = ctx.pipeline(kernel.name, kernel.source, entry, &[("WORKGROUP", WORKGROUP_1D as u64)]);
    let uniform = ctx.uniform(&params(count));
    let mut bound = buffers.to_vec();
    bound.push(&uniform);
    bound.extend_from_slice(after);
    let bind = ctx.bind(&pipeline, &bound);
    let (x, y) = grid_1d(n, ctx.max_workgroups_per_dim());
    encoder.dispatch(&pipeline, &bind, (x, y, 1));
    Ok(())
}

/// `GpuError::Shape` for `op` unless every tensor of `named` holds as many values as the first.
pub(crate) fn check_same_len(op: &'static str, named: &[(&str, &GpuTensor)]) -> Result<usize, GpuError> {
    let n = named.first().map_or(0, |(_, t)| t.len());
    if named.iter().all(|(_, t)| t.len() == n) {
        return Ok(n);
    }
    let mut list: Vec<String> = named.iter().map(|(name, t)| format!("{name} {:?}", t.shape)).collect();
    let last = list.pop().unwrap_or_default();
    Err(GpuError::Shape { op, detail: format!("{} and {last} must hold as many values", list.join(", ")) })
}

/// Workgroup grid for `n` independent items of `WORKGROUP_1D` threads each. WebGPU caps each grid
/// dimension (65535 by default), so large tensors spill into y; kernels rebuild the flat index from
/// `num_workgroups`.
pub(crate) fn grid_1d(n: usize, max_per_dim: u32) -> (u32, u32) {
    let groups = n.div_ceil(WORKGROUP_1D as usize).max(1) as u64;
    let x = groups.min(max_per_dim as u64);
    let y = groups.div_ceil(x);
    (x as u32, y as u32)
}

/// Workgroup grid for `rows` workgroups (the row kernels: one workgroup per row), spilling into y
/// like [`grid_1d`]; kernels rebuild the row as `workgroup_id.y · num_workgroups.x + workgroup_id.x`
/// and the surplus workgroups of the last grid row exit at once.
pub(crate) fn grid_rows(rows: usize, max_per_dim: u32) -> (u32, u32) {
    let groups = rows.max(1) as u64;
    let x = groups.min(max_per_dim as u64);
    let y = groups.div_ceil(x);
    (x as u32, y as u32)
}

/// `GpuError::Shape` for `op` unless `t` holds at least `need` values.
pub(crate) fn check_len(op: &'static str, what: &str, t: &GpuTensor, need: usize) -> Result<(), GpuError> {
    if t.len() < need {
        return Err(GpuError::Shape {
            op,
            detail: format!("{what} has {} values (shape {:?}), needs {need}", t.len(), t.shape),
        });
    }
    Ok(())
}

/// `GpuError::Shape` for `op` unless `n` (an index range a shader addresses) fits in a u32.
pub(crate) fn check_u32(op: &'static str, what: &str, n: usize) -> Result<u32, GpuError> {
    u32::try_from(n).map_err(|_| GpuError::Shape {
        op,
        detail: format!("{what} ({n}) is beyond the 2^32 a shader can index"),
    })
}
