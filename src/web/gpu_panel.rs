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
        </section>
    }
}
