//! Shows the GPU adapter and the result of the GPU self-test, or a sentence saying why WebGPU is missing.

use leptos::prelude::*;

use crate::gpu::{AdapterSummary, GpuContext};
use crate::selftest::{self, Check};

#[derive(Debug, Clone, PartialEq)]
pub enum GpuStatus {
    Running,
    Done { adapter: AdapterSummary, checks: Vec<Check> },
    Failed(String),
}

impl GpuStatus {
    /// Open the GPU and run the self-test: the engine's side of this panel.
    pub async fn probe() -> Self {
        let ctx = match GpuContext::new().await {
            Ok(ctx) => ctx,
            Err(e) => return GpuStatus::Failed(e.to_string()),
        };
        match selftest::run(&ctx).await {
            Ok(checks) => GpuStatus::Done { adapter: ctx.adapter(), checks },
            Err(e) => GpuStatus::Failed(format!("The GPU self-test could not run: {e}")),
        }
    }

    /// "running", "passed" or "failed": what the page (and the end-to-end test) reads.
    pub fn label(&self) -> &'static str {
        match self {
            GpuStatus::Running => "running",
            GpuStatus::Done { checks, .. } if checks.iter().all(|c| c.passed) => "passed",
            _ => "failed",
        }
    }
}

#[component]
pub fn GpuPanel() -> impl IntoView {
    let (status, set_status) = signal(GpuStatus::Running);
    leptos::task::spawn_local(async move { set_status.set(GpuStatus::probe().await) });

    let summary = move || {
        let s = status.get();
        let text = match &s {
            GpuStatus::Running => "Running the GPU self-test…".to_string(),
            GpuStatus::Done { checks, .. } => {
                let ok = checks.iter().filter(|c| c.passed).count();
                if ok == checks.len() {
                    format!("Self-test passed: {ok} of {} GPU checks match the CPU reference.", checks.len())
                } else {
                    format!("Self-test FAILED: only {ok} of {} GPU checks match the CPU reference.", checks.len())
                }
            }
            GpuStatus::Failed(why) => why.clone(),
        };
        view! {
            <p data-testid="selftest" data-status=s.label() class=format!("status-{}", s.label()) role="status">
                {text}
            </p>
        }
    };

    let details = move || match status.get() {
        GpuStatus::Done { adapter, checks } => Some(view! {
            <dl>
                <dt>"Adapter"</dt><dd data-testid="adapter-name">{adapter.name}</dd>
                <dt>"Backend"</dt><dd>{adapter.backend}" ("{adapter.device_type}")"</dd>
                <dt>"Largest buffer"</dt><dd>{format!("{} MiB", adapter.max_buffer_size >> 20)}</dd>
                <dt>"Largest storage binding"</dt><dd>{format!("{} MiB", adapter.max_storage_binding >> 20)}</dd>
            </dl>
            <table>
                <caption class="visually-hidden">"GPU self-test checks"</caption>
                <thead><tr><th>"Check"</th><th>"Max error"</th><th>"Tolerance"</th><th>"Result"</th></tr></thead>
                <tbody>
                    {checks.into_iter().map(|c| view! {
                        <tr>
                            <td>{c.name}</td>
                            <td>{format!("{:.1e}", c.max_error)}</td>
                            <td>{format!("{:.0e}", c.tolerance)}</td>
                            <td>{if c.passed { "ok" } else { "FAIL" }}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        }),
        _ => None,
    };

    view! {
        <section aria-labelledby="gpu-heading">
            <h2 id="gpu-heading">"Your GPU"</h2>
            {summary}
            {details}
            <ProfileTable/>
        </section>
    }
}

/// "Where the time goes": GPU time per kernel kind of one training step and one generated token
/// on the loaded model's device, measured when asked (`AppState::measure_profile`).
#[component]
pub fn ProfileTable() -> impl IntoView {
    let state = super::AppState::get();
    let measuring = move || state.busy.get() == Some("profiling");
    let disabled = move || state.studio.get().is_none() || state.busy.get().is_some();
    let body = move || match state.profile.get() {
        None => view! { <p>"Not measured yet."</p> }.into_any(),
        Some(Err(why)) => view! { <p class="error" role="alert">{why}</p> }.into_any(),
        Some(Ok(w)) => {
            let (step, token) = (&w.step.profile, &w.token.profile);
            let mut kinds: Vec<crate::gpu::profile::Kind> = step.kinds.iter().chain(&token.kinds).map(|k| k.kind).collect();
            let mut seen = Vec::new();
            kinds.retain(|k| if seen.contains(k) { false } else { seen.push(*k); true });
            let cell = |p: &crate::gpu::profile::Profile, kind| match p.kinds.iter().find(|k| k.kind == kind) {
                Some(k) => format!("{:.2} ms ({}×, {:.0}%)", k.ms, k.dispatches, 100.0 * k.ms / p.total_ms().max(f64::MIN_POSITIVE)),
                None => "–".into(),
            };
            let rows = kinds
                .into_iter()
                .map(|kind| view! { <tr data-kind=kind.label()><td>{kind.label()}</td><td>{cell(step, kind)}</td><td>{cell(token, kind)}</td></tr> })
                .collect_view();
            let caption = format!(
                "{}. Training step: batch {} × {} tokens, LoRA r 8 on q, v, {:.1} ms wall; generated token: after a {}-token prompt, {:.1} ms wall.",
                step.source.label(), w.batch, w.seq, w.step.wall_ms, w.prompt, w.token.wall_ms
            );
            view! {
                <table data-testid="profile-table">
                    <caption>{caption}</caption>
                    <thead><tr><th>"Kernel kind"</th><th>"Training step"</th><th>"Generated token"</th></tr></thead>
                    <tbody>{rows}</tbody>
                    <tfoot><tr>
                        <td>"total"</td>
                        <td data-testid="profile-step-total">{format!("{:.2} ms ({}×)", step.total_ms(), step.dispatches())}</td>
                        <td data-testid="profile-token-total">{format!("{:.2} ms ({}×)", token.total_ms(), token.dispatches())}</td>
                    </tr></tfoot>
                </table>
            }
            .into_any()
        }
    };
    view! {
        <details data-testid="profile">
            <summary>"Where the time goes"</summary>
            <button data-testid="profile-measure" disabled=disabled on:click=move |_| leptos::task::spawn_local(state.measure_profile())>
                {move || if measuring() { "Measuring…" } else { "Measure a training step and a generated token" }}
            </button>
            {body}
        </details>
    }
}
