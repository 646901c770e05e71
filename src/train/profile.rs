//! Where the time of one training step and one generated token goes (`gpu::profile`): what
//! `loratab bench --profile` prints and the page's "Where the time goes" table shows.

use crate::gpu::profile::{now_ms, Profile};
use crate::gpu::GpuContext;
use crate::lora::{LoraOptions, Target};
use crate::model::{GpuModel, Pick};
use crate::rng::Rng;

use super::{new_lora, Session, TrainError, TrainSettings};

/// A profile and the wall time of the work it covers (the GPU drained before the clock stops).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Timed {
    pub profile: Profile,
    pub wall_ms: f64,
}

/// One training step and one generated token, profiled.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkProfile {
    /// One optimizer step (batch × seq tokens, LoRA rank 8 on q and v), after an unprofiled one.
    pub step: Timed,
    /// One new token after a `prompt`-token prefill and one unprofiled token (KV cache, greedy).
    pub token: Timed,
    pub batch: usize,
    pub seq: usize,
    pub prompt: usize,
}

/// Profile one training step of `batch` × `seq` random tokens (LoRA rank 8 on q and v) and one
/// greedy token after a `prompt`-token prompt on `model` (its adapter is thrown away; the model is
/// left as it was).
pub async fn profile_work(ctx: &GpuContext, model: &GpuModel, batch: usize, seq: usize, prompt: usize) -> Result<WorkProfile, TrainError> {
    let opts = LoraOptions { rank: 8, alpha: 16.0, targets: vec![Target::Q, Target::V], ..LoraOptions::default() };
    let settings = TrainSettings { batch, seq_len: seq, ..TrainSettings::default() };
    profile_work_with(ctx, model, &opts, settings, prompt).await
}

/// [`profile_work`] with the adapter `opts` and the step's `settings` (batch, sequence length,
/// checkpointing, dropout, memory limit) of a real run: what the page measures at its settings.
pub async fn profile_work_with(ctx: &GpuContext, model: &GpuModel, opts: &LoraOptions, settings: TrainSettings, prompt: usize) -> Result<WorkProfile, TrainError> {
    let c = &model.config;
    let (batch, seq) = (settings.batch.max(1), settings.seq_len.min(c.max_positions).max(2));
    let prompt = prompt.min(c.max_positions - 2).max(1);
    let mut rng = Rng::new(7);
    let mut random = |n: usize| (0..n).map(|_| (rng.next_u64() % c.vocab_size as u64) as u32).collect::<Vec<u32>>();
    let lora = new_lora(ctx, model, opts).await?;
    let settings = TrainSettings { steps: 2, batch, seq_len: seq, warmup: 0, log_every: 2, ..settings };
    // Enough windows for two steps and the held-out tenth.
    let mut session = Session::new(ctx, model, random(seq * batch * 6), lora, settings).await?;
    // The first step also compiles the pipelines (and, with tuning on, tunes new matmul classes).
    session.step(ctx, model).await?;
    let step = timed(ctx, session.step(ctx, model)).await?;
    drop(session);

    let ids = random(prompt);
    let token = match model.decode_step(ctx, &ids, 0, None, Pick::Argmax).await? {
        crate::model::Picked::Token(id) => id,
        _ => unreachable!("Argmax picks a token"),
    };
    let next = match model.decode_step(ctx, &[token], prompt, None, Pick::Argmax).await? {
        crate::model::Picked::Token(id) => id,
        _ => unreachable!("Argmax picks a token"),
    };
    let token = timed(ctx, model.decode_step(ctx, &[next], prompt + 1, None, Pick::Argmax)).await?;
    Ok(WorkProfile { step, token, batch, seq, prompt })
}

/// Run `work` profiled, with the GPU idle before and after the clock.
async fn timed<T, E>(ctx: &GpuContext, work: impl std::future::Future<Output = Result<T, E>>) -> Result<Timed, TrainError>
where
    TrainError: From<E>,
{
    ctx.wait_idle().await?;
    ctx.start_profile();
    let t = now_ms();
    let done = work.await;
    let idle = ctx.wait_idle().await;
    let wall_ms = now_ms() - t;
    let profile = ctx.finish_profile().expect("started above");
    done?;
    idle?;
    Ok(Timed { profile, wall_ms })
}
