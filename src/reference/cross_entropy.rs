//! Reference for `shaders/cross_entropy.wgsl`: per row of logits [T, V] with target ids [T],
//! loss[t] = logsumexp(logits[t]) − logits[t, target[t]] (natural log, numerically stable).

pub fn cross_entropy(logits: &[f32], vocab: usize, targets: &[u32]) -> Vec<f32> {
    logits
        .chunks(vocab)
        .zip(targets)
        .map(|(row, &target)| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
            max + sum.ln() - row[target as usize]
        })
        .collect()
}
