//! Text generation with a KV cache: the prompt is run once, then each new token costs one position.
//! The token is chosen on the GPU (`GpuModel::decode_step`): greedy reads back its id, top-k
//! sampling its k candidates (drawn here by [`sample_ranked`], exactly as [`sample`] would).
//! Generation ends at the first stop id (the model's EOS and end-of-turn tokens,
//! `Config::stop_ids`), which is not returned, as transformers' `generate` ends at `eos_token_id`.

use crate::gpu::{topk, GpuContext};
use crate::model::{Branch, GpuModel, ModelError, Pick, Picked, StepInput};
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
    let ranked: Vec<(u32, f32)> = order.iter().map(|&i| (i as u32, logits[i])).collect();
    sample_ranked(&ranked, s.temperature, rng)
}

/// Draw one of `ranked` ((id, logit), most likely first, non-empty) with probabilities
/// softmax(logit / temperature): one `rng` draw.
pub fn sample_ranked(ranked: &[(u32, f32)], temperature: f32, rng: &mut Rng) -> u32 {
    let max = ranked[0].1;
    let weights: Vec<f64> = ranked.iter().map(|&(_, v)| (((v - max) / temperature) as f64).exp()).collect();
    let mut r = rng.next_f32() as f64 * weights.iter().sum::<f64>();
    for (w, &(i, _)) in weights.iter().zip(ranked) {
        r -= w;
        if r <= 0.0 {
            return i;
        }
    }
    ranked[ranked.len() - 1].0
}

/// Up to `max_tokens` new tokens after `prompt` (fewer if the context fills up or the model emits
/// one of its stop ids, `model.config.stop_ids`, which is left out), with an adapter run beside the
/// frozen weights when `adapter` is given.
pub async fn generate(
    ctx: &GpuContext,
    model: &GpuModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    adapter: Option<&dyn Branch>,
) -> Result<Vec<u32>, ModelError> {
    generate_until(ctx, model, prompt, max_tokens, sampling, adapter, &model.config.stop_ids).await
}

/// [`generate`] stopping at `stop` instead of the model's stop ids (empty: only at `max_tokens` or
/// the end of the context).
pub async fn generate_until(
    ctx: &GpuContext,
    model: &GpuModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    adapter: Option<&dyn Branch>,
    stop: &[u32],
) -> Result<Vec<u32>, ModelError> {
    generate_watched(ctx, model, prompt, max_tokens, sampling, adapter, stop, |_| {}).await
}

/// [`generate_until`] calling `on_token` as each token is read back, stop ids included (the
/// bench times the steps with it).
#[allow(clippy::too_many_arguments)]
pub async fn generate_watched(
    ctx: &GpuContext,
    model: &GpuModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: &Sampling,
    adapter: Option<&dyn Branch>,
    stop: &[u32],
    mut on_token: impl FnMut(u32),
) -> Result<Vec<u32>, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::EmptyText);
    }
    let mut rng = Rng::new(sampling.seed);
    let mut out = Vec::new();
    let mut past = 0;
    let mut next_input = prompt.to_vec();
    let vocab = model.config.vocab_size;
    // top_k beyond the vocabulary keeps all of it, as `sample` does.
    let pick = match sampling.top_k.min(vocab) {
        _ if sampling.temperature <= 0.0 => Pick::Argmax,
        k if k > 0 && (k <= topk::MAX_K || vocab <= topk::MAX_K) => Pick::TopK(k),
        _ => Pick::Logits,
    };
    let room = |out: &[u32], past: usize, len: usize| out.len() < max_tokens && past + len <= model.config.max_positions;
    if !room(&out, past, next_input.len()) {
        return Ok(out);
    }
    let mut step = model.submit_step(ctx, StepInput::Tokens(&next_input), past, adapter, pick).await?;
    loop {
        let after = past + next_input.len();
        // Greedy: submit the next step, which takes this one's pick on the GPU, before reading this
        // one, so the device never waits for the host. Wasted only when this token is a stop.
        let ahead = match pick == Pick::Argmax && out.len() + 1 < max_tokens && after < model.config.max_positions {
            true => Some(model.submit_step(ctx, StepInput::Previous(&step), after, adapter, pick).await?),
            false => None,
        };
        let token = match model.finish_step(ctx, step).await? {
            Picked::Token(id) => id,
            Picked::Ranked(ranked) => sample_ranked(&ranked, sampling.temperature, &mut rng),
            Picked::Logits(logits) => sample(&logits, sampling, &mut rng),
        };
        on_token(token);
        if stop.contains(&token) {
            break;
        }
        out.push(token);
        past = after;
        next_input = vec![token];
        if !room(&out, past, 1) {
            break;
        }
        step = match ahead {
            Some(next) => next,
            None => model.submit_step(ctx, StepInput::Tokens(&next_input), past, adapter, pick).await?,
        };
    }
    Ok(out)
}
