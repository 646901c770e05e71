//! Rank against quality: train one adapter per chosen rank with the same data, steps, seed and
//! α/r, then plot the validation loss against rank (and adapter size) with a table — the LoRA
//! paper's rank tables in miniature, on the user's text.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::browser;
use super::chart::{LineChart, Series};
use super::format;
use super::state::AppState;
use crate::lora::LoraOptions;
use crate::studio::StudioError;

const RANKS: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

#[derive(Debug, Clone, PartialEq)]
struct RankResult {
    rank: usize,
    params: usize,
    bytes: usize,
    fraction: f64,
    train_loss: Option<f32>,
    val_loss: f64,
    seconds: f64,
}

#[component]
pub fn RankDemo() -> impl IntoView {
    let state = AppState::get();
    let chosen = RwSignal::new(vec![1usize, 2, 4, 8, 16, 32]);
    let results = RwSignal::new(Vec::<RankResult>::new());
    let base = RwSignal::new(None::<f64>);
    let progress = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let stop = RwSignal::new(false);
    let running = RwSignal::new(false);

    let start = move |_| {
        let Some(studio) = state.studio.get_untracked() else { return };
        let (opts, settings) = match state.form.parse(studio.config()) {
            Ok(p) => p,
            Err(e) => return error.set(Some(e)),
        };
        if !state.claim("comparing ranks") {
            return;
        }
        let text = state.text.get_untracked();
        let ranks = chosen.get_untracked();
        // Keep α/r as in Settings, so every rank gets the same effective step size.
        let alpha_per_rank = opts.alpha / opts.rank as f32;
        error.set(None);
        results.set(Vec::new());
        base.set(None);
        stop.set(false);
        running.set(true);
        spawn_local(async move {
            let outcome: Result<(), StudioError> = async {
                for (i, &rank) in ranks.iter().enumerate() {
                    let opts = LoraOptions { rank, alpha: alpha_per_rank * rank as f32, ..opts.clone() };
                    let mut run = studio.start(&text, &opts, settings.clone()).await?;
                    if base.get_untracked().is_none() {
                        base.set(Some(studio.validation_loss(&run).await?));
                    }
                    let t0 = browser::now_ms();
                    let mut train_loss = None;
                    while !run.finished() {
                        if stop.get_untracked() {
                            return Ok(());
                        }
                        let r = studio.step(&mut run).await?;
                        train_loss = r.loss.or(train_loss);
                        progress.set(format!("Rank {rank} ({} of {}): step {} of {}", i + 1, ranks.len(), r.step, settings.steps));
                        browser::yield_now().await;
                    }
                    let val_loss = studio.validation_loss(&run).await?;
                    let size = studio.adapter_size(&opts)?;
                    let seconds = (browser::now_ms() - t0) / 1000.0;
                    results.update(|v| {
                        v.push(RankResult { rank, params: size.params, bytes: size.bytes, fraction: size.fraction, train_loss, val_loss, seconds })
                    });
                }
                Ok(())
            }
            .await;
            if let Err(e) = outcome {
                error.set(Some(format!("The rank comparison stopped: {e}.")));
                state.gpu_failed(&e);
            }
            progress.set(if stop.get_untracked() { "Stopped.".into() } else { "Done.".into() });
            running.set(false);
            state.release();
        });
    };

    let series = Signal::derive(move || {
        let rs = results.get();
        let mut out = vec![Series {
            name: "validation loss after training".into(),
            class: "series-val",
            points: rs.iter().map(|r| (r.rank as f64, r.val_loss)).collect(),
        }];
        if let (Some(b), false) = (base.get(), rs.is_empty()) {
            let (lo, hi) = (rs.iter().map(|r| r.rank).min().unwrap_or(1), rs.iter().map(|r| r.rank).max().unwrap_or(1));
            out.push(Series { name: "base model (no adapter)".into(), class: "series-base", points: vec![(lo as f64, b), (hi as f64, b)] });
        }
        out
    });
    // x ticks: the rank with the adapter's size under it.
    let ticks = Signal::derive(move || results.get().iter().map(|r| (r.rank as f64, format!("{} · {}", r.rank, format::bytes(r.bytes as u64)))).collect::<Vec<_>>());
    let rank_box = move |r: usize| {
        let id = format!("demo-rank-{r}");
        let label_for = id.clone();
        view! {
            <label for=label_for class="check">
                <input id=id type="checkbox" prop:checked=move || chosen.get().contains(&r)
                    on:change=move |ev| {
                        let on = event_target_checked(&ev);
                        chosen.update(|c| { c.retain(|x| *x != r); if on { c.push(r); c.sort(); } });
                    }/>
                {r.to_string()}
            </label>
        }
    };
    view! {
        <section aria-labelledby="ranks-heading">
            <h2 id="ranks-heading">"7. Rank against quality"</h2>
            <p class="hint">"Trains one adapter per rank with the Settings above (same text, steps, seed and α/r) and compares their validation loss."</p>
            <fieldset><legend>"Ranks"</legend>{RANKS.map(rank_box).into_iter().collect_view()}</fieldset>
            <div class="buttons">
                <button type="button" data-testid="ranks-start" on:click=start
                    prop:disabled=move || state.studio.get().is_none() || state.busy.get().is_some() || chosen.get().is_empty()>"Compare ranks"</button>
                <button type="button" on:click=move |_| stop.set(true) prop:disabled=move || !running.get()>"Stop"</button>
            </div>
            <p role="status" data-testid="ranks-progress">{move || progress.get()}</p>
            {move || error.get().map(|e| view! { <p class="status-failed" role="alert">{e}</p> })}
            <LineChart series=series title="Validation loss against LoRA rank" x_label="rank · adapter size" y_label="validation loss" log2_x=true x_ticks=ticks/>
            <table data-testid="ranks-table" data-base=move || base.get().map(|b| b.to_string())>
                <caption>"Validation loss by rank"{move || base.get().map(|b| format!(" (base model: {b:.4})"))}</caption>
                <thead><tr><th scope="col">"Rank"</th><th scope="col">"Trainable parameters"</th><th scope="col">"Adapter size"</th>
                    <th scope="col">"Of the base"</th><th scope="col">"Training loss"</th><th scope="col">"Validation loss"</th><th scope="col">"Time"</th></tr></thead>
                <tbody>
                    {move || results.get().into_iter().map(|r| view! {
                        <tr data-rank=r.rank data-params=r.params data-val=r.val_loss.to_string()>
                            <td>{r.rank}</td><td>{format::count(r.params)}</td><td>{format::bytes(r.bytes as u64)}</td>
                            <td>{format::percent(r.fraction)}</td>
                            <td>{r.train_loss.map(|l| format!("{l:.4}")).unwrap_or_default()}</td>
                            <td>{format!("{:.4}", r.val_loss)}</td><td>{format::duration(r.seconds)}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        </section>
    }
}
