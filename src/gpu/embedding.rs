//! Launcher for `shaders/embedding.wgsl`: out[t, :] = (or +=) table[ids[t] − row0, :] for the ids this
//! part of the table holds. CPU reference: `reference::embedding`.

use super::{check_len, check_u32, for_format, launch_1d, weight_kernels, GpuContext, GpuError, GpuTensor, Kernel1d, Recorder};

/// The lookup composed with each weight format's `weight_at` (`shaders/weight_<format>.wgsl`: the
/// table stays packed and is decoded per value) and the 1-D prelude; picked by the table's format.
const KERNELS: [Kernel1d; 6] = weight_kernels!(
    "embedding",
    include_str!("../../shaders/embedding.wgsl"),
    include_str!("../../shaders/prelude_1d.wgsl")
);

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    dim: u32,
    row0: u32,
    rows: u32,
    accumulate: u32,
}

/// Record the lookup of `ids` (u32, from `upload_u32`; `tokens = ids.len()`) in `table`, which holds
/// rows `row0 .. row0 + table.len() / dim` of the vocabulary (a large embedding is split in parts, one
/// `encode` per part). Token t gets `out[t, :] = table[ids[t] − row0, :]`, or `+=` when `accumulate`,
/// if its id lies in this part; otherwise its row of `out` [tokens, dim] is left untouched. Ids beyond
/// every part are not an error here: the caller validates them against the vocabulary.
#[allow(clippy::too_many_arguments)]
pub fn encode(
    ctx: &GpuContext,
    encoder: &mut Recorder,
    table: &GpuTensor,
    dim: usize,
    row0: usize,
    ids: &GpuTensor,
    out: &GpuTensor,
    accumulate: bool,
) -> Result<(), GpuError> {
    if dim == 0 || table.len() % dim != 0 {
        return Err(GpuError::Shape {
            op: "embedding",
            detail: format!("table {:?} is not a whole number of rows of dim {dim}", table.shape),
        });
    }
    let rows = table.len() / dim;
    let tokens = ids.len();
    check_len("embedding", "out", out, tokens * dim)?;
    check_u32("embedding", "the part's end row0 + rows", row0 + rows)?;
    if rows == 0 {
        return Ok(());
    }
    let params = |n| Params {
        n,
        dim: dim as u32,
        row0: row0 as u32,
        rows: rows as u32,
        accumulate: accumulate as u32,
    };
    super::check_f32("embedding", "out", out)?;
    launch_1d(ctx, encoder, "embedding", for_format(&KERNELS, table.format), tokens * dim, &[&ids.buffer, &table.buffer, &out.buffer], params)
}
