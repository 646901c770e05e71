// residual_norm: per row r, the residual add and the norm that always follows it, in one pass:
//   s = a + b                                   (the residual stream after a block's branch)
// b may be the sum of `parts` partial products laid one after the other ([parts, rows, dim]: a
// decode step's MLP output as matvec_pair's `mlp` leaves it), added in order: s = ((a + b_0) + b_1) …
//   layernorm (kind 1): y = (s − mean) · 1/sqrt(var + eps) · weight + bias   (biased var, as torch)
//   rmsnorm   (kind 0): y = s · 1/sqrt(Σ s² / dim + eps) · weight            (bias unused)
// Fusing saves a dispatch and a full read of s per residual (add, then norm reading s back).
// Each thread reads back only the values of s it wrote itself, so no barrier guards s.
//
// Layout: a, s, y [rows, dim] f32 row-major; b [parts, rows, dim]; weight, bias [dim].
// Dispatch: one workgroup of WG threads per row (any dim: threads stride over the row; WG is the
// override of shaders/workgroup_reduce.wgsl, set by gpu::row_workgroup); the grid is
// 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is rebuilt from num_workgroups.

struct Params { rows: u32, dim: u32, eps: f32, kind: u32, parts: u32, _p0: u32, _p1: u32, _p2: u32 }

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> s: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> p: Params;

// workgroup_sum / workgroup_max / workgroup_sum2 and `scratch`: shaders/workgroup_reduce.wgsl.

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
        @builtin(num_workgroups) groups: vec3<u32>) {
    let row = wid.y * groups.x + wid.x;
    if (row >= p.rows) {
        return; // uniform per workgroup: the whole group leaves together
    }
    let base = row * p.dim;
    let t = lid.x;
    let n = f32(p.dim);

    // Pass 1: the residual add, and the row sum (layernorm) or sum of squares (rmsnorm).
    var acc = 0.0;
    for (var i = t; i < p.dim; i += WG) {
        var v = a[base + i];
        for (var j = 0u; j < p.parts; j++) {
            v += b[j * p.rows * p.dim + base + i];
        }
        s[base + i] = v;
        acc += select(v * v, v, p.kind == 1u);
    }
    let total = workgroup_sum(t, acc);

    if (p.kind == 1u) {
        // Layernorm: the variance of s − mean in a second pass, like the reference.
        let mean = total / n;
        var q = 0.0;
        for (var i = t; i < p.dim; i += WG) {
            let d = s[base + i] - mean;
            q = fma(d, d, q);
        }
        let rstd = 1.0 / sqrt(workgroup_sum(t, q) / n + p.eps);
        for (var i = t; i < p.dim; i += WG) {
            y[base + i] = (s[base + i] - mean) * rstd * weight[i] + bias[i];
        }
    } else {
        let rstd = 1.0 / sqrt(total / n + p.eps);
        for (var i = t; i < p.dim; i += WG) {
            y[base + i] = s[base + i] * rstd * weight[i];
        }
    }
}
