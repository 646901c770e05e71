//! Before and after: the same prompt, seed and sampling through the base model and through the
//! model with the adapter, side by side.

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::state::AppState;
use crate::generate::Sampling;

#[component]
pub fn ComparePanel() -> impl IntoView {
    let state = AppState::get();
    let prompt = RwSignal::new("It was".to_string());
    let tokens = RwSignal::new("40".to_string());
    let temperature = RwSignal::new("0.8".to_string());
    let seed = RwSignal::new("0".to_string());
    let base = RwSignal::new(String::new());
    let tuned = RwSignal::new(String::new());
    let error = RwSignal::new(None::<String>);
    let generate = move |_| {
        let parsed = (|| {
            let max: usize = tokens.get().trim().parse().map_err(|_| "New tokens must be a whole number.")?;
            let temperature: f32 = temperature.get().trim().parse().map_err(|_| "The temperature must be a number (0 picks the likeliest token).")?;
            let seed: u64 = seed.get().trim().parse().map_err(|_| "The seed must be a whole number.")?;
            if !(temperature >= 0.0 && temperature.is_finite()) {
                return Err("The temperature must be 0 or more.");
            }
            Ok((max.clamp(1, 400), Sampling { temperature, top_k: 40, seed }))
        })();
        let (max, sampling) = match parsed {
            Ok(p) => p,
            Err(e) => return error.set(Some(e.to_string())),
        };
        error.set(None);
        let p = prompt.get();
        spawn_local(async move {
            match state.compare(p.clone(), max, sampling).await {
                Ok((b, t)) => {
                    base.set(format!("{p}{b}"));
                    tuned.set(t.map(|t| format!("{p}{t}")).unwrap_or_else(|| "(train or load an adapter first)".into()));
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let field = |id: &'static str, label: &'static str, v: RwSignal<String>, kind: &'static str| {
        view! {
            <div class="field">
                <label for=id>{label}</label>
                <input id=id type=kind step="any" prop:value=move || v.get() on:input=move |ev| v.set(event_target_value(&ev))/>
            </div>
        }
    };
    let adapter_step = move || {
        let _ = state.busy.get();
        state.run.with_value(|r| r.as_ref().map(|r| format!(" (step {})", r.steps_done()))).unwrap_or_default()
    };
    view! {
        <section aria-labelledby="compare-heading">
            <h2 id="compare-heading">"5. Compare"</h2>
            <div class="fields">
                {field("prompt", "Prompt", prompt, "text")}
                {field("gen-tokens", "New tokens", tokens, "number")}
                {field("temperature", "Temperature", temperature, "number")}
                {field("gen-seed", "Seed", seed, "number")}
            </div>
            <button type="button" data-testid="generate" on:click=generate
                prop:disabled=move || state.studio.get().is_none() || state.busy.get().is_some()>"Generate with both"</button>
            {move || error.get().map(|e| view! { <p class="status-failed" role="alert">{e}</p> })}
            <div class="side-by-side">
                <figure><figcaption>"Base model"</figcaption><output data-testid="compare-base">{move || base.get()}</output></figure>
                <figure><figcaption>"With the adapter"{adapter_step}</figcaption><output data-testid="compare-tuned">{move || tuned.get()}</output></figure>
            </div>
        </section>
    }
}
