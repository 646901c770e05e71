//! The decode path of generation: one step runs new tokens through the network with the KV cache
//! (the prompt in one batched pass, then one token a step), the LM head on the last row only (on a
//! CPU device a one-row step's head takes the final norm, `CachedPass::encode_head`), and
//! the token choice on the GPU (`gpu::topk`), all in one submission, and reads back the chosen id
//! (4 bytes; 8·k for top-k sampling, whose draw stays on the CPU). The step's buffers — activations,
//! logits, the read-back staging buffer — and its uniforms and bind groups (a [`DispatchCache`] for
//! steps without and one for steps with an adapter) are kept for the next step of the same row
//! count: one set for one-row steps and one for the last prompt's, so a new token allocates nothing
//! on the GPU, and neither does the next generation from a prompt as long (the page's Compare runs
//! the base and the adapter from one prompt, then again at the next click).

use std::sync::{Arc, Mutex};

use super::forward::{positions, Acts, CachedPass};
use super::{block, Branch, GpuModel, ModelError};
use crate::gpu::{topk, DispatchCache, GpuContext, GpuError, GpuTensor};

/// What a step hands back for the next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pick {
    /// The argmax (greedy; lowest id on ties).
    Argmax,
    /// The k ≤ [`topk::MAX_K`] most likely tokens, ranked (sampling among the top k).
    TopK(usize),
    /// The whole row of logits (sampling among more than [`topk::MAX_K`]).
    Logits,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Picked {
    Token(u32),
    /// (id, logit), most likely first, as `generate::sample` ranks them.
    Ranked(Vec<(u32, f32)>),
    Logits(Vec<f32>),
}

/// The tokens a step runs: given by the host, or the one token a previous greedy step picked,
/// copied on the GPU from its picks (the previous step need not have been read back).
pub enum StepInput<'a> {
    Tokens(&'a [u32]),
    Previous(&'a PendingStep),
}

/// A step submitted and not yet read back ([`GpuModel::finish_step`] reads it).
pub struct PendingStep {
    pick: Pick,
    k: usize,
    /// Where its pick is on the GPU (a `Previous` input copies the id from here) and its copy to read.
    picks: GpuTensor,
    staging: wgpu::Buffer,
    /// Its logits, for `Pick::Logits`.
    logits: GpuTensor,
    submission: Option<wgpu::SubmissionIndex>,
}

/// One step's buffers, kept for the next step with as many rows (`GpuModel::decode`: one-row steps
/// in slot 0, a prompt's in slot 1).
pub(super) struct DecodeState {
    acts: Acts,
    /// The adapter's scratch [rows, cols], when a step had one.
    scratch: Option<GpuTensor>,
    /// The last row of the hidden states [1, hidden] and its logits [1, vocab].
    last: GpuTensor,
    logits: GpuTensor,
    /// topk's output: ids, then the values' bits.
    picks: GpuTensor,
    /// Read-back buffers, used in turn: a step may be submitted while the previous one's is still
    /// to be read (at most two steps of a slot in flight, as `generate` runs them).
    staging: [wgpu::Buffer; 2],
    next_staging: usize,
    /// Steps without, and with, an adapter record different dispatches: a cache each.
    dispatch: [Arc<Mutex<DispatchCache>>; 2],
}

impl DecodeState {
    async fn new(ctx: &GpuContext, model: &GpuModel, rows: usize) -> Result<Self, GpuError> {
        let c = &model.config;
        let bytes = (2 * topk::MAX_K * 4) as u64;
        Ok(Self {
            acts: Acts::new(ctx, c, rows).await?,
            scratch: None,
            last: ctx.zeros(&[1, c.hidden_size]).await?,
            logits: ctx.zeros(&[1, c.vocab_size]).await?,
            picks: ctx.zeros(&[2 * topk::MAX_K]).await?,
            staging: [0, 1].map(|_| {
                ctx.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("picks readback"),
                    size: bytes,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }),
            next_staging: 0,
            dispatch: [DispatchCache::new(), DispatchCache::new()],
        })
    }
}

impl GpuModel {
    /// Run `tokens` at positions past..past + len (attending to the `past` cached ones, 0 starts
    /// anew), with `branch` beside the frozen projections when given, and pick from the last
    /// token's logits as `pick` says: [`Self::submit_step`] then [`Self::finish_step`].
    pub async fn decode_step(&self, ctx: &GpuContext, tokens: &[u32], past: usize, branch: Option<&dyn Branch>, pick: Pick) -> Result<Picked, ModelError> {
        let pending = self.submit_step(ctx, StepInput::Tokens(tokens), past, branch, pick).await?;
        self.finish_step(ctx, pending).await
    }

    /// Record and submit a step (see [`Self::decode_step`]) without waiting for it. A
    /// [`StepInput::Previous`] input must come from a step that picked with `Pick::Argmax`.
    pub async fn submit_step(&self, ctx: &GpuContext, input: StepInput<'_>, past: usize, branch: Option<&dyn Branch>, pick: Pick) -> Result<PendingStep, ModelError> {
        let (t, previous) = match input {
            StepInput::Tokens(tokens) => {
                self.check_tokens(tokens, past)?;
                (tokens.len(), None)
            }
            StepInput::Previous(p) => {
                if p.pick != Pick::Argmax {
                    return Err(ModelError::Gpu(GpuError::Shape { op: "decode_step", detail: format!("a step can take its token from a greedy step only, not from one that picked {:?}", p.pick) }));
                }
                self.check_tokens(&[0], past)?;
                (1, Some(p.picks.clone()))
            }
        };
        let c = &self.config;
        let (d, vocab) = (c.hidden_size, c.vocab_size);
        let k = match pick {
            Pick::Argmax => 1,
            Pick::TopK(k) => k.clamp(1, topk::MAX_K.min(vocab)),
            Pick::Logits => 0,
        };
        // Taken out while the step is recorded (no lock across an await); attention keeps O(rows), so the
        // state does not grow with the context.
        let slot = usize::from(t > 1);
        let kept = self.decode.lock().unwrap()[slot].take();
        let mut state = match kept {
            Some(s) if s.acts.rows == t => s,
            _ => DecodeState::new(ctx, self, t).await?,
        };
        let branch = match branch {
            Some(b) => {
                let cols = b.scratch_cols();
                if state.scratch.as_ref().is_none_or(|s| s.shape != [t, cols]) {
                    state.scratch = Some(ctx.zeros(&[t, cols]).await?);
                }
                Some((b, state.scratch.clone().expect("set above")))
            }
            None => None,
        };
        if let StepInput::Tokens(tokens) = input {
            ctx.queue.write_buffer(&state.acts.ids.buffer, 0, bytemuck::cast_slice(tokens));
        }
        ctx.queue.write_buffer(&state.acts.pos_ids.buffer, 0, bytemuck::cast_slice(&positions(past, t)));
        let pass = CachedPass { branch, past, blocks: &self.blocks, cache: self.kv_cache(ctx).await?, acts: state.acts.clone(), head_norm: true };
        let staging = state.staging[state.next_staging].clone();
        state.next_staging = 1 - state.next_staging;
        let s = &state;
        let ran = ctx
            .run_cached(&s.dispatch[usize::from(pass.branch.is_some())], |enc| {
                if let Some(picks) = &previous {
                    // The previous step's argmax (picks[0], an id's bits) is this step's token.
                    enc.copy_buffer_to_buffer(&picks.buffer, 0, &s.acts.ids.buffer, 0, 4);
                }
                block::encode_network(ctx, enc, self, &pass)?;
                match pass.head_parts(ctx, self) {
                    // The final norm and the head in one dispatch from the residual stream
                    // (`Pass::norms_at_head` left the norm to it).
                    Some(parts) => pass.encode_head(ctx, enc, self, parts, &s.logits)?,
                    None => {
                        enc.copy_buffer_to_buffer(&s.acts.out.buffer, ((t - 1) * d * 4) as u64, &s.last.buffer, 0, (d * 4) as u64);
                        self.encode_logits(ctx, enc, &s.last, 1, &s.logits)?;
                    }
                }
                if k > 0 {
                    let order = if pick == Pick::Argmax { topk::Order::Greedy } else { topk::Order::Total };
                    topk::encode(ctx, enc, &s.logits, vocab, k, order, &s.picks)?;
                    // Greedy needs the id alone.
                    let bytes = if pick == Pick::Argmax { 4 } else { (2 * k * 4) as u64 };
                    enc.copy_buffer_to_buffer(&s.picks.buffer, 0, &staging, 0, bytes);
                }
                Ok(())
            })
            .await;
        let pending = PendingStep { pick, k, picks: state.picks.clone(), staging, logits: state.logits.clone(), submission: ctx.last_submission() };
        drop(pass);
        self.decode.lock().unwrap()[slot] = Some(state);
        ran?;
        Ok(pending)
    }

    /// Wait for a submitted step and read its pick back.
    pub async fn finish_step(&self, ctx: &GpuContext, step: PendingStep) -> Result<Picked, ModelError> {
        let PendingStep { pick, k, staging, logits, submission, .. } = step;
        let picked = match pick {
            Pick::Logits => Picked::Logits(ctx.read(&logits).await?),
            Pick::Argmax => Picked::Token(bytemuck::pod_read_unaligned(&ctx.map_read_after(&staging, 4, submission).await?[..4])),
            Pick::TopK(_) => {
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&ctx.map_read_after(&staging, (2 * k * 4) as u64, submission).await?);
                Picked::Ranked((0..k).map(|i| (words[i], f32::from_bits(words[k + i]))).collect())
            }
        };
        Ok(picked)
    }
}
