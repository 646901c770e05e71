//! Text generation with a KV cache: the prompt is run once, then each new token costs one position.

use crate::gpu::GpuContext;
use crate::model::{Branch, GpuModel, ModelError};
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 = greedy (argmax, lowest id on ties, like torch).
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = all).
    pub top_k: usize,
    pub seed: u64,
}

/// Pick the next token from one row of logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut Rng) -> u32 {
    if s.temperature <= 0.0 {
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if s.top_k > 0 {
        order.truncate(s.top_k);
    }
    let max = logits[order[0]];
    let weights: Vec<f64> = order.iter().map(|&i| (((logits[i] - max) / s.temperature) as f64).exp()).collect();
    let mut r = rng.next_f32() as f64 * weights.iter().sum::<f64>();
    for (w, &i) in weights.iter().zip(&order) {
        r -= w;
        if r <= 0.0 {
            return i as u32;
        }
    }
    order[order.len() - 1] as u32
}

/// Up to `max_tokens` new tokens after `prompt` (fewer if the context fills up), with an adapter
/// run beside the frozen weights when `adapter` is given.
pub async fn generate(
    ctx: &GpuContext,
    model: &GpuModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    adapter: Option<&dyn Branch>,
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::EmptyText);
    }
    let mut rng = Rng::new(sampling.seed);
    let mut out = Vec::new();
    let mut past = 0;
    let mut next_input = prompt.to_vec();
    while out.len() < max_tokens && past + next_input.len() <= model.config.max_positions {
        let last = model.last_logits(ctx, &next_input, past, adapter).await?;
        let token = sample(&last, sampling, &mut rng);
        out.push(token);
        past += next_input.len();
        next_input = vec![token];
    }
    Ok(out)
}
