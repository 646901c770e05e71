// embedding: out[t, c] = table[ids[t] − row0, c]        (or += when accumulate = 1)
//            for t < tokens, c < dim, and only where row0 ≤ ids[t] < row0 + rows
//
// A large vocabulary is split into parts of `rows` rows (one storage binding may be capped at
// 128 MiB); each part is one dispatch and writes only the tokens whose id falls inside it, leaving the
// other rows of out untouched. Accumulating adds onto out (GPT-2's learned positions).
// Layout: table [rows, dim] f32, ids [tokens] u32, out [tokens, dim] f32; n = tokens · dim.
// Dispatch: one thread per output value, 256 threads per workgroup over a 2-D grid (x ≤ the
// per-dimension limit, spilling into y); the flat index is rebuilt from num_workgroups.

struct Params { n: u32, dim: u32, row0: u32, rows: u32, accumulate: u32 }

@group(0) @binding(0) var<storage, read> table: array<f32>;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.y * groups.x * 256u + gid.x;
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
    let v = table[r * p.dim + c];
    if (p.accumulate == 1u) {
        out[i] = out[i] + v;
    } else {
        out[i] = v;
    }
}
