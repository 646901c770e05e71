
// ---- prelude_1d.wgsl: appended by `gpu::launch_1d` to every one-dimensional kernel (add, scale,
// gelu, silu_mul, dropout, embedding, adamw, rope and their backwards), so the grid arithmetic is
// written once. Not an op of its own: it has no entry point.
//   WORKGROUP              threads per workgroup, set by the launcher from `gpu::WORKGROUP_1D` (a
//                          pipeline-overridable constant: the kernel says @workgroup_size(WORKGROUP))
//   flat_index(gid, groups) the thread's flat index: WebGPU caps each grid dimension (65535 by
//                          default), so `gpu::grid_1d` spills large dispatches into y, and
//                          i = gid.y · (groups.x · WORKGROUP) + gid.x. Threads past n (the last grid
//                          row's surplus) must return: every kernel tests i < n.

override WORKGROUP: u32;

fn flat_index(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.y * groups.x * WORKGROUP + gid.x;
}
