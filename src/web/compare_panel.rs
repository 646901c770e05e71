//! Before and after: the same prompt, seed and sampling through the base model and through the
//! model with the adapter, side by side. With examples, the question is a user turn rendered with
//! the chat template, either typed or a held-out example's (whose expected answer is shown too),
//! and each answer ends where the template ends one. The base model's answer to the same prompt,
//! length and sampling as the last click's is shown again without generating it (`Studio::compare`).

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::state::{AppState, Ask, DataMode};
use crate::generate::Sampling;
use crate::train::{Message, Role};

#[component]
pub fn ComparePanel() -> impl IntoView {
    let state = AppState::get();
    let prompt = RwSignal::new("It was".to_string());
    let question = RwSignal::new(String::new());
    // The held-out example picked (an index into `state.data.held_out`), or None for a typed question.
    let picked = RwSignal::new(None::<usize>);
    let tokens = RwSignal::new("40".to_string());
    let temperature = RwSignal::new("0.8".to_string());
    let seed = RwSignal::new("0".to_string());
    let base = RwSignal::new(String::new());
    let tuned = RwSignal::new(String::new());
    let expected = RwSignal::new(None::<String>);
    let error = RwSignal::new(None::<String>);
    // Whether the base answer shown is the last click's (Studio::compare did not generate it again).
    let reused = RwSignal::new(false);
    let examples = move || state.data.mode.get() == DataMode::Examples;
    // A new run's held-out list replaces the old one: a pick into the old one is gone.
    Effect::new(move |_| {
        state.data.held_out.track();
        picked.set(None);
    });
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
        // What to ask, and what is shown before each model's text (the prompt it continues).
        let (ask, shown, want) = if examples() {
            match picked.get().and_then(|i| state.data.held_out.with(|h| h.get(i).cloned())) {
                Some(h) => (Ask::Chat(h.context), String::new(), Some(h.expected)),
                None if question.get().trim().is_empty() => return error.set(Some("Type a question or pick a held-out example.".into())),
                None => (Ask::Chat(vec![Message::new(Role::User, question.get())]), String::new(), None),
            }
        } else {
            let p = prompt.get();
            (Ask::Text(p.clone()), p, None)
        };
        error.set(None);
        expected.set(want);
        spawn_local(async move {
            match state.compare(ask, max, sampling).await {
                Ok(c) => {
                    base.set(format!("{shown}{}", c.base));
                    reused.set(c.base_reused);
                    tuned.set(c.tuned.map(|t| format!("{shown}{t}")).unwrap_or_else(|| "(train or load an adapter first)".into()));
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
    // Examples: a held-out example to pick, or a question to type (a user turn).
    let ask_fields = move || {
        if !examples() {
            return field("prompt", "Prompt", prompt, "text").into_any();
        }
        let options = move || {
            state.data.held_out.get().into_iter().enumerate().map(|(i, h)| view! { <option value=i.to_string()>{h.question().to_string()}</option> }).collect_view()
        };
        view! {
            <div class="field">
                <label for="held-out">"Held-out example"</label>
                <select id="held-out" data-testid="held-out"
                    prop:value=move || picked.get().map(|i| i.to_string()).unwrap_or_default()
                    on:change=move |ev| picked.set(event_target_value(&ev).parse().ok())>
                    <option value="">{move || if state.data.held_out.with(Vec::is_empty) { "(train on examples first)" } else { "(type a question instead)" }}</option>
                    {options}
                </select>
            </div>
            <div class="field">
                <label for="question">"Question"</label>
                <input id="question" type="text" prop:value=move || question.get()
                    on:input=move |ev| { picked.set(None); question.set(event_target_value(&ev)); }/>
            </div>
        }
        .into_any()
    };
    view! {
        <section aria-labelledby="compare-heading">
            <h2 id="compare-heading">"5. Compare"</h2>
            <div class="fields">
                {ask_fields}
                {field("gen-tokens", "New tokens", tokens, "number")}
                {field("temperature", "Temperature", temperature, "number")}
                {field("gen-seed", "Seed", seed, "number")}
            </div>
            {move || examples().then(|| view! { <p class="hint">"The question is sent as a user turn in the model's chat template; each answer stops where the template ends an answer."</p> })}
            <button type="button" data-testid="generate" on:click=generate
                prop:disabled=move || state.studio.get().is_none() || state.busy.get().is_some()>"Generate with both"</button>
            {move || error.get().map(|e| view! { <p class="status-failed" role="alert">{e}</p> })}
            {move || expected.get().map(|e| view! {
                <figure><figcaption>"Expected answer"</figcaption><output data-testid="compare-expected">{e}</output></figure>
            })}
            <div class="side-by-side">
                <figure>
                    <figcaption data-testid="compare-base-caption">"Base model"{move || reused.get().then_some(" (as before: its weights do not change)")}</figcaption>
                    <output data-testid="compare-base">{move || base.get()}</output>
                </figure>
                <figure><figcaption>"With the adapter"{adapter_step}</figcaption><output data-testid="compare-tuned">{move || tuned.get()}</output></figure>
            </div>
        </section>
    }
}
