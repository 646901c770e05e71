// layernorm_backward: the gradient of layernorm with respect to x (weight and bias are frozen).
// Per row r of x [rows, dim], recomputing the forward's statistics (two passes, biased variance):
//   mean = Σ x / dim,  var = Σ (x − mean)² / dim,  rstd = 1/sqrt(var + eps),  x̂ = (x − mean)·rstd
//   g = dy ⊙ weight
//   dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))
//
// Layout: x, dy, dx [rows, dim] f32 row-major; weight [dim].
// Dispatch: one workgroup of WG threads per row (any dim: threads stride over the row; WG is the
// override of shaders/workgroup_reduce.wgsl, set by gpu::row_workgroup); the grid is
// 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is rebuilt from num_workgroups.
// Three workgroup reductions per row: Σ x, Σ (x − mean)², then Σ g and Σ g·x̂ together (vec2).

struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
@group(0) @binding(4) var<uniform> p: Params;

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

    var s = 0.0;
    for (var i = t; i < p.dim; i += WG) {
        s += x[base + i];
    }
    let mean = workgroup_sum2(t, vec2<f32>(s, 0.0)).x / n;

    var q = 0.0;
    for (var i = t; i < p.dim; i += WG) {
        let d = x[base + i] - mean;
        q = fma(d, d, q);
    }
    let variance = workgroup_sum2(t, vec2<f32>(q, 0.0)).x / n;
    let rstd = 1.0 / sqrt(variance + p.eps);

    var acc = vec2<f32>(0.0, 0.0);
    for (var i = t; i < p.dim; i += WG) {
        let g = dy[base + i] * weight[i];
        let xhat = (x[base + i] - mean) * rstd;
        acc += vec2<f32>(g, g * xhat);
    }
    let sums = workgroup_sum2(t, acc) / n;   // (mean(g), mean(g·x̂))

    for (var i = t; i < p.dim; i += WG) {
        let g = dy[base + i] * weight[i];
        let xhat = (x[base + i] - mean) * rstd;
        dx[base + i] = rstd * (g - sums.x - xhat * sums.y);
    }
}
