// rope_backward: the gradient of rope, in place. The rotation is orthogonal, so the gradient is rotated
// back by the same angle: for i < half = head_dim / 2, with inv_freq_i = 1 / theta^(2i / head_dim) and
// a = f32(position) · inv_freq_i (token t of dy [tokens, heads, head_dim] at position pos0 + t):
//   dx[i]        = dy[i] · cos a + dy[i + half] · sin a
//   dx[i + half] = dy[i + half] · cos a − dy[i] · sin a
// (an odd head_dim passes its last value through, as the forward leaves it untouched).
//
// Exactly the forward's angles: the same CPU-computed (cos, sin) table (see rope.wgsl).
// Layout: dy [tokens · heads · head_dim] f32, read and overwritten with dx; cos_sin [tokens · half] vec2.
// Dispatch: one thread per (token, head, i) pair, n = tokens · heads · half, 256 threads per
// workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling into y).

struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<storage, read_write> grad: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;
// (cos a, sin a) for token t and frequency i at cos_sin[t · half + i], computed on the CPU.
@group(0) @binding(2) var<storage, read> cos_sin: array<vec2<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = gid.y * groups.x * 256u + gid.x;
    if (j >= p.n) {
        return;
    }
    let i = j % p.half;
    let th = j / p.half;              // token · heads + head
    let t = th / p.heads;
    let base = th * p.head_dim;

    let cs = cos_sin[t * p.half + i];
    let c = cs.x;
    let s = cs.y;

    let g0 = grad[base + i];
    let g1 = grad[base + i + p.half];
    grad[base + i] = g0 * c + g1 * s;
    grad[base + i + p.half] = g1 * c - g0 * s;
}
