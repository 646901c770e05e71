// rope: rotary position embedding, in place, Hugging Face's "rotate half" convention.
// x is [tokens, heads, head_dim]; token t sits at position pos0 + t. For i < half = head_dim / 2,
// with inv_freq_i = 1 / theta^(2i / head_dim) and a = f32(position) · inv_freq_i:
//   x'[i]        = x[i] · cos a − x[i + half] · sin a
//   x'[i + half] = x[i + half] · cos a + x[i] · sin a
// (an odd head_dim leaves its last value untouched, as the reference does).
//
// inv_freq comes from the launcher, computed on the CPU in f32 exactly like the reference (a GPU's pow
// is only accurate to a few ulp, and the angle multiplies that error by the position); the angle
// itself, its sine and its cosine are computed here.
// a is reduced to [−π, π] before sin/cos (Cody–Waite, 2π split in three parts whose first two have
// 11 significant bits, so k · part is exact for k < 8192, i.e. angles up to ~51000): WGSL only bounds
// sin/cos errors on [−π, π], and GPU approximations degrade for large arguments.
// Layout: x [tokens · heads · head_dim] f32, read and written in place.
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
    inv_freq: array<vec4<f32>, 128>,  // inv_freq_i at [i / 4][i % 4], i < half ≤ 512
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: Params;

const INV_TWO_PI: f32 = 0.15915493667125702;
const TWO_PI_1: f32 = 6.28125;                  // 201 / 32
const TWO_PI_2: f32 = 0.0019350051879882812;    // 2029 / 2^20
const TWO_PI_3: f32 = 3.019916050561733e-07;    // the rest (error ~7e-15)

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

    let inv_freq = p.inv_freq[i / 4u][i % 4u];
    let a = f32(p.pos0 + t) * inv_freq;
    let k = round(a * INV_TWO_PI);
    var r = a - k * TWO_PI_1;
    r = r - k * TWO_PI_2;
    r = r - k * TWO_PI_3;
    let s = sin(r);
    let c = cos(r);

    let x0 = x[base + i];
    let x1 = x[base + i + p.half];
    x[base + i] = x0 * c - x1 * s;
    x[base + i + p.half] = x1 * c + x0 * s;
}
