// rope: rotary position embedding, in place, Hugging Face's "rotate half" convention, forward
// (sign = +1) and backward (sign = −1) in one kernel.
// x is [tokens, heads, head_dim]; token t sits at position pos0 + t. For i < half = head_dim / 2,
// with inv_freq_i = 1 / theta^(2i / head_dim), a = f32(position) · inv_freq_i and s = sign · sin a:
//   x'[i]        = x[i] · cos a − x[i + half] · s
//   x'[i + half] = x[i + half] · cos a + x[i] · s
// (an odd head_dim leaves its last value untouched, as the reference does). The rotation is
// orthogonal, so the backward (the gradient dy in x, overwritten with dx) is the rotation by −a:
// sign = −1, i.e. dx[i] = dy[i]·cos a + dy[i + half]·sin a, dx[i + half] = dy[i + half]·cos a − dy[i]·sin a.
// sign · sin a is exact for sign = ±1, so each direction computes what a kernel of its own would.
//
// The angles' cosines and sines come from the launcher, computed on the CPU in f32 exactly like the
// reference (as transformers caches cos/sin): WGSL only promises sin/cos to ~2^-11 absolute, and
// software WebGPU (SwiftShader) is that coarse, which moved a small Llama's logits by 2e-3.
// Layout: x [tokens · heads · head_dim] f32, read and written in place; cos_sin [tokens · half] vec2.
// Dispatch: one thread per (token, head, i) pair, n = tokens · heads · half, WORKGROUP threads per
// workgroup over a 2-D grid (x ≤ the per-dimension limit, spilling into y; flat_index in prelude_1d.wgsl).

struct Params {
    n: u32,
    half: u32,
    head_dim: u32,
    heads: u32,
    pos0: u32,    // informational: the table already holds the positions' angles
    sign: f32,    // +1 forward, −1 backward
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
// (cos a, sin a) for token t and frequency i at cos_sin[t · half + i], computed on the CPU.
@group(0) @binding(1) var<storage, read> cos_sin: array<vec2<f32>>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(WORKGROUP)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let j = flat_index(gid, groups);
    if (j >= p.n) {
        return;
    }
    let i = j % p.half;
    let th = j / p.half;              // token · heads + head
    let t = th / p.heads;
    let base = th * p.head_dim;

    let cs = cos_sin[t * p.half + i];
    let c = cs.x;
    let s = p.sign * cs.y;

    let x0 = x[base + i];
    let x1 = x[base + i + p.half];
    x[base + i] = x0 * c - x1 * s;
    x[base + i + p.half] = x1 * c + x0 * s;
}
