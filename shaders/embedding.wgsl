// embedding: out[t, c] = table[ids[t] − row0, c]        (or += when accumulate = 1)
//            for t < tokens, c < dim, and only where row0 ≤ ids[t] < row0 + rows
//
// A large vocabulary is split into parts of `rows` rows (one storage binding may be capped at
// 128 MiB); each part is one dispatch and writes only the tokens whose id falls inside it, leaving the
// other rows of out untouched. Accumulating adds onto out (GPT-2's learned positions).
// Layout: table [rows, dim] (the `weight` binding, read only through weight_at: see weight_f32.wgsl),
// ids [tokens] u32, out [tokens, dim] f32; n = tokens · dim.
// Dispatch: one thread per output value, WORKGROUP threads per workgroup over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y); the flat index comes from flat_index (prelude_1d.wgsl).
// Composed by the launcher: embedding.wgsl + weight_<format>.wgsl + prelude_1d.wgsl.

struct Params { n: u32, dim: u32, row0: u32, rows: u32, accumulate: u32 }

@group(0) @binding(0) var<storage, read> ids: array<u32>;
// binding 1: the table, `weight` in weight_<format>.wgsl
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = flat_index(gid, groups);
    if (i >= p.n) {
        return;
    }
    let t = i / p.dim;
    let c = i - t * p.dim;
    let id = ids[t];
    // Unsigned: ids below row0 wrap around to huge values and fail the same test.
    let r = id - p.row0;
    if (id < p.row0 || r >= p.rows) {
        return;
    }
    let v = weight_at(r * p.dim + c);
    if (p.accumulate == 1u) {
        out[i] = out[i] + v;
    } else {
        out[i] = v;
    }
}
