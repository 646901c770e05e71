// stage_norm: the norm prologue of the fused decode kernels (matvec_pair's `mlp`, matvec_qkv's
// `normed`): from the residual stream A [ROWS, K] and the partial products still to add to it, ADD
// [parts, ROWS, K] (parts may be 0),
//   S = A + Σ_{j < parts} ADD[j]                         (added in order)
//   H = S · 1/sqrt(Σ S² / K + eps) · NORM_W              (residual_norm.wgsl's formula, per row)
// H goes to workgroup memory `xs` (vec4s, row-major [ROWS, K/4]); S is stored into `c2` when `store`
// (one workgroup of the dispatch stores it). Every workgroup computes the same H (the same sums in
// the same order), so the kernel needs no second dispatch for the norm: on a CPU device a dispatch
// costs more than these few thousand values.
// Composed after a kernel that declares `a` and `add` (storage, array<vec4<f32>>), `norm_w`
// (storage, array<vec4<f32>>), `c2` (storage, array<f32>), `xs` (workgroup, array<vec4<f32>>, at
// least ROWS · K/4), `red` (workgroup, array<f32>, at least THREADS) and the overrides ROWS (the rows)
// and THREADS (threads per workgroup; thread `t` calls it, every thread of the workgroup does).

fn stage_norm(t: u32, store: bool, k: u32, parts: u32, eps: f32) {
    let k4 = k / 4u;
    for (var m = 0u; m < ROWS; m++) {
        var ss = 0.0;
        for (var i = t; i < k4; i += THREADS) {
            let r = m * k4 + i;
            var v = a[r];
            for (var j = 0u; j < parts; j++) {
                v += add[j * ROWS * k4 + r];
            }
            xs[r] = v;
            ss += dot(v, v);
        }
        red[t] = ss;
        workgroupBarrier();
        var total = 0.0;
        for (var j = 0u; j < THREADS; j++) {
            total += red[j];
        }
        let rstd = 1.0 / sqrt(total / f32(k) + eps);
        workgroupBarrier(); // red is rewritten for the next row
        for (var i = t; i < k4; i += THREADS) {
            let r = m * k4 + i;
            if (store) {
                for (var j = 0u; j < 4u; j++) {
                    c2[4u * r + j] = xs[r][j];
                }
            }
            xs[r] = xs[r] * rstd * norm_w[i];
        }
    }
    workgroupBarrier();
}
