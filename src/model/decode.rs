//! The decode path of generation: one step runs new tokens through the network with the KV cache
//! (the prompt in one batched pass, then one token a step), the LM head on the last row only, and
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
    staging: wgpu::Buffer,
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
            staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("picks readback"),
                size: bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            dispatch: [DispatchCache::new(), DispatchCache::new()],
        })
    }
}

impl GpuModel {
    /// Run `tokens` at positions past..past + len (attending to the `past` cached ones, 0 starts
    /// anew), with `branch` beside the frozen projections when given, and pick from the last
    /// token's logits as `pick` says.
    pub async fn decode_step(&self, ctx: &GpuContext, tokens: &[u32], past: usize, branch: Option<&dyn Branch>, pick: Pick) -> Result<Picked, ModelError> {
        self.check_tokens(tokens, past)?;
        let c = &self.config;
        let (t, d, vocab) = (tokens.len(), c.hidden_size, c.vocab_size);
        let k = match pick {
            Pick::Argmax => 1,
            Pick::TopK(k) => k.clamp(1, topk::MAX_K.min(vocab)),
            Pick::Logits => 0,
        };
        // Taken out while the step runs (no lock across an await); attention keeps O(rows), so the
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
        ctx.queue.write_buffer(&state.acts.ids.buffer, 0, bytemuck::cast_slice(tokens));
        ctx.queue.write_buffer(&state.acts.pos_ids.buffer, 0, bytemuck::cast_slice(&positions(past, t)));
        let pass = CachedPass { branch, past, layers: self.blocks.len(), cache: self.kv_cache(ctx).await?, acts: state.acts.clone() };
        let read = (2 * k * 4) as u64;
        let s = &state;
        let ran = ctx
            .run_cached(&s.dispatch[usize::from(pass.branch.is_some())], |enc| {
                block::encode_network(ctx, enc, self, &pass)?;
                enc.copy_buffer_to_buffer(&s.acts.out.buffer, ((t - 1) * d * 4) as u64, &s.last.buffer, 0, (d * 4) as u64);
                self.encode_logits(ctx, enc, &s.last, 1, &s.logits)?;
                if k > 0 {
                    let order = if pick == Pick::Argmax { topk::Order::Greedy } else { topk::Order::Total };
                    topk::encode(ctx, enc, &s.logits, vocab, k, order, &s.picks)?;
                    // Greedy needs the id alone.
                    let bytes = if pick == Pick::Argmax { 4 } else { read };
                    enc.copy_buffer_to_buffer(&s.picks.buffer, 0, &s.staging, 0, bytes);
                }
                Ok(())
            })
            .await;
        let picked = match ran {
            Err(e) => Err(e),
            Ok(()) if k == 0 => ctx.read(&state.logits).await.map(Picked::Logits),
            Ok(()) if pick == Pick::Argmax => ctx.map_read(&state.staging, 4).await.map(|b| Picked::Token(bytemuck::pod_read_unaligned(&b[..4]))),
            Ok(()) => ctx.map_read(&state.staging, read).await.map(|b| {
                let words: Vec<u32> = bytemuck::pod_collect_to_vec(&b);
                Picked::Ranked((0..k).map(|i| (words[i], f32::from_bits(words[k + i]))).collect())
            }),
        };
        drop(pass);
        self.decode.lock().unwrap()[slot] = Some(state);
        Ok(picked?)
    }
}
