//! Shows the GPU adapter and the result of the GPU self-test, or a sentence saying why WebGPU is missing.

use leptos::prelude::*;

use crate::gpu::profile::{Kind, Profile};
use crate::gpu::{AdapterSummary, GpuContext};
use crate::studio::Profiled;
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

/// One cell of the profile: a kind's time in one piece of work (data-ms holds the figure).
fn profile_cell(p: &Profile, kind: Kind) -> AnyView {
    match p.kinds.iter().find(|k| k.kind == kind) {
        Some(k) => {
            let share = 100.0 * k.ms / p.total_ms().max(f64::MIN_POSITIVE);
            view! { <td data-ms=k.ms.to_string() data-dispatches=k.dispatches>{format!("{:.2} ms ({}×, {share:.0}%)", k.ms, k.dispatches)}</td> }.into_any()
        }
        None => view! { <td data-ms="0" data-dispatches="0">"–"</td> }.into_any(),
    }
}

fn gflops(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |g| format!("{g:.2}"))
}

/// "Where the time goes": GPU time per kernel kind of one training step at the current settings
/// and one generated token on the loaded model, and the matmul variant each shape class got on
/// this device; measured (and the matmul tuned) when the user asks (`AppState::measure_profile`).
#[component]
pub fn ProfileTable() -> impl IntoView {
    let state = super::AppState::get();
    let measuring = move || state.busy.get() == Some("profiling");
    let body = move || match state.profile.get() {
        None => view! { <p>"Measures one training step at your settings and one generated token on the loaded model, and tunes the matrix multiplication on this GPU (a few seconds to a minute)."</p> }.into_any(),
        Some(Err(why)) => view! { <p class="error" role="alert" data-testid="profile-error">{why}</p> }.into_any(),
        Some(Ok(Profiled { work: w, matmul })) => {
            let (step, token) = (w.step.profile.clone(), w.token.profile.clone());
            let mut kinds: Vec<Kind> = step.kinds.iter().chain(&token.kinds).map(|k| k.kind).collect();
            kinds.sort();
            kinds.dedup();
            let rows = kinds
                .into_iter()
                .map(|kind| view! { <tr data-kind=kind.label()><th scope="row">{kind.label()}</th>{profile_cell(&step, kind)}{profile_cell(&token, kind)}</tr> })
                .collect_view();
            let total = |p: &Profile, wall: f64| {
                view! { <td data-ms=p.total_ms().to_string() data-wall-ms=wall.to_string()>{format!("{:.2} ms ({}×; {:.1} ms wall)", p.total_ms(), p.dispatches(), wall)}</td> }
            };
            let caption = format!(
                "{}. Training step: batch {} × {} tokens at your adapter settings; generated token: after a {}-token prompt, greedy.",
                step.source.label(), w.batch, w.seq, w.prompt
            );
            let variants = matmul
                .into_iter()
                .map(|c| view! { <tr><td>{c.class}</td><td data-testid="matmul-variant">{c.variant}</td><td>{gflops(c.gflops)}</td><td>{gflops(c.default_gflops)}</td></tr> })
                .collect_view();
            view! {
                <table data-testid="profile-table" data-source=format!("{:?}", step.source)>
                    <caption>{caption}</caption>
                    <thead><tr><th scope="col">"Kernel kind"</th><th scope="col">"Training step"</th><th scope="col">"Generated token"</th></tr></thead>
                    <tbody>{rows}</tbody>
                    <tfoot><tr data-testid="profile-total"><th scope="row">"total"</th>{total(&step, w.step.wall_ms)}{total(&token, w.token.wall_ms)}</tr></tfoot>
                </table>
                <table data-testid="matmul-variants">
                    <caption>"Matrix multiplication tuned on this GPU: the variant each shape class uses (tile, threads, block per thread), with GFLOP/s when it was timed in this session (– : chosen in an earlier one)."</caption>
                    <thead><tr><th scope="col">"Shape class"</th><th scope="col">"Variant"</th><th scope="col">"GFLOP/s"</th><th scope="col">"Default's GFLOP/s"</th></tr></thead>
                    <tbody>{variants}</tbody>
                </table>
            }
            .into_any()
        }
    };
    view! {
        <details data-testid="profile">
            <summary>"Where the time goes"</summary>
            <button data-testid="profile-measure" prop:disabled=measuring on:click=move |_| leptos::task::spawn_local(state.measure_profile())>
                {move || if measuring() { "Measuring…" } else { "Measure" }}
            </button>
            {body}
        </details>
    }
}
