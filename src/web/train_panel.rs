//! Training: start, stop and resume, the step counter, tokens/s, ETA, and the live loss chart.

use leptos::prelude::*;

use super::chart::{LineChart, Series};
use super::persist::SavedNote;
use super::format;
use super::state::{AppState, TrainStatus};

#[component]
pub fn TrainPanel() -> impl IntoView {
    let state = AppState::get();
    let status = state.train_status;
    let running = move || matches!(status.get(), TrainStatus::Running | TrainStatus::Preparing);
    let can_train = move || state.studio.get().is_some() && state.busy.get().is_none();
    // Resume after Stop, or continue a finished run when the steps were raised.
    let can_resume = move || {
        let has_run = state.run.with_value(|r| r.is_some());
        let wanted: Option<usize> = state.form.steps.get().trim().parse().ok();
        can_train()
            && has_run
            && match status.get() {
                TrainStatus::Stopped | TrainStatus::StoppedEarly { .. } => true,
                TrainStatus::Finished => wanted.is_some_and(|w| w > state.step.get()),
                _ => false,
            }
    };
    let series = Signal::derive(move || {
        let points = state.points.get();
        vec![
            Series {
                name: "training loss".into(),
                class: "series-train",
                points: points.iter().filter_map(|p| Some((p.step as f64, p.train? as f64))).collect(),
            },
            Series {
                name: "validation loss".into(),
                class: "series-val",
                points: points.iter().filter_map(|p| Some((p.step as f64, p.val?))).collect(),
            },
            Series {
                name: "best adapter (lowest validation loss)".into(),
                class: "series-best",
                points: state.data.best.get().map(|b| (b.step as f64, b.loss)).into_iter().collect(),
            },
        ]
    });
    let list = move |pick: fn(&super::state::LossPoint) -> Option<f64>| {
        state.points.get().iter().filter_map(pick).map(|v| format!("{v:.5}")).collect::<Vec<_>>().join(",")
    };
    let message = move || match status.get() {
        TrainStatus::Idle => "Ready to train.".to_string(),
        TrainStatus::Preparing => "Preparing the run on the GPU…".into(),
        TrainStatus::Running => "Training…".into(),
        TrainStatus::Stopped => "Stopped. Resume continues exactly where it left off.".into(),
        TrainStatus::StoppedEarly { step, patience, best_step, best_loss } => format!(
            "Stopped early at step {step}: {patience} validation{} in a row without a lower loss than step {best_step}'s. \
             The adapter of step {best_step} (the best, validation loss {best_loss:.4}) is kept: it is the one the download gives.",
            if patience == 1 { "" } else { "s" }
        ),
        TrainStatus::Finished => "Finished.".into(),
        TrainStatus::Failed(e) => e,
    };
    let progress = move || {
        let (step, total) = (state.step.get(), state.total_steps.get());
        let rate = state.tokens_per_s.get().map(|r| format!("{r:.0} tokens/s")).unwrap_or_else(|| "— tokens/s".into());
        let eta = state.eta_s.get().map(|s| format!("about {} left", format::duration(s))).unwrap_or_default();
        view! {
            <p class="progress">
                <span data-testid="step" data-step=step
                    data-gpu-tensors=move || state.gpu_live.get().map(|(t, _)| t)
                    data-gpu-bytes=move || state.gpu_live.get().map(|(_, b)| b)>{format!("Step {step} of {total}")}</span>" · "
                <span data-testid="rate">{rate}</span>" "<span>{eta}</span>
            </p>
            <progress max={total.max(1)} value=step aria-label="Training progress"></progress>
        }
    };
    view! {
        <section aria-labelledby="train-heading">
            <h2 id="train-heading">"4. Train"</h2>
            <div class="buttons">
                <button type="button" data-testid="train" on:click=move |_| state.train(true) prop:disabled=move || !can_train()>"Train a new adapter"</button>
                <button type="button" data-testid="stop" on:click=move |_| state.stop.set(true) prop:disabled=move || !running()>"Stop"</button>
                <button type="button" data-testid="resume" on:click=move |_| state.train(false) prop:disabled=move || !can_resume()>"Resume"</button>
            </div>
            <p data-testid="train-status" data-state=move || status.get().label()
                class=move || if matches!(status.get(), TrainStatus::Failed(_)) { "status-failed" } else { "" }
                role="status" aria-live="polite">{message}</p>
            {progress}
            <SavedNote/>
            <figure data-testid="loss-chart"
                data-train=move || list(|p| p.train.map(f64::from))
                data-val=move || list(|p| p.val)
                data-best-step=move || state.data.best.get().map(|b| b.step)>
                <LineChart series=series title="Training and validation loss by step" x_label="step" y_label="loss (nats)"/>
            </figure>
        </section>
    }
}
