// layernorm: per row r of x [rows, dim]:
//   mean = Σ x / dim,  var = Σ (x − mean)² / dim  (biased, as torch),
//   y = (x − mean) · 1/sqrt(var + eps) · weight + bias
// Two passes over the row (mean first, then the variance of x − mean), like the reference, so rows
// with a large common offset keep their precision.
//
// Layout: x, y [rows, dim] f32 row-major; weight, bias [dim].
// Dispatch: one workgroup of WG threads per row (any dim: threads stride over the row; WG is the
// override of shaders/workgroup_reduce.wgsl, set by gpu::row_workgroup); the grid is
// 2-D (x ≤ the per-dimension limit, spilling into y) and the row index is rebuilt from num_workgroups.

struct Params { rows: u32, dim: u32, eps: f32, _pad: u32 }

@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> weight: array<f32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
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
    let mean = workgroup_sum(t, s) / n;

    var q = 0.0;
    for (var i = t; i < p.dim; i += WG) {
        let d = x[base + i] - mean;
        q = fma(d, d, q);
    }
    let variance = workgroup_sum(t, q) / n;
    let rstd = 1.0 / sqrt(variance + p.eps);

    for (var i = t; i < p.dim; i += WG) {
        y[base + i] = (x[base + i] - mean) * rstd * weight[i] + bias[i];
    }
}
