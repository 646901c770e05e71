//! LoRA and training settings, each with a one-line explanation; the adapter's trainable
//! parameters, size and fraction of the base model update as they change.

use leptos::prelude::*;

use super::format;
use super::state::AppState;
use crate::lora::Target;
use crate::studio::TAB_GPU_MEMORY;

/// One labelled number field with its explanation.
#[component]
fn Field(id: &'static str, label: &'static str, help: &'static str, value: RwSignal<String>, #[prop(optional)] step: Option<&'static str>) -> impl IntoView {
    let help_id = format!("{id}-help");
    view! {
        <div class="field">
            <label for=id>{label}</label>
            <input id=id type="number" step=step.unwrap_or("1") min="0" aria-describedby=help_id.clone()
                prop:value=move || value.get() on:input=move |ev| value.set(event_target_value(&ev))/>
            <small id=help_id>{help}</small>
        </div>
    }
}

#[component]
pub fn SettingsPanel() -> impl IntoView {
    let state = AppState::get();
    let f = state.form;
    let target_box = move |t: Target, what: &'static str| {
        let id = format!("target-{}", t.name());
        let label_for = id.clone();
        view! {
            <label for=label_for class="check">
                <input id=id type="checkbox"
                    prop:checked=move || f.targets.get().contains(&t)
                    on:change=move |ev| {
                        let on = event_target_checked(&ev);
                        f.targets.update(|ts| {
                            ts.retain(|x| *x != t);
                            if on { ts.push(t); ts.sort(); }
                        });
                    }/>
                {format!("{} ", t.name())}<small>{what}</small>
            </label>
        }
    };
    // The live adapter size, or the sentence saying what is wrong with the settings.
    let verdict = move || {
        let studio = state.studio.get()?;
        Some(match f.parse(studio.config()).and_then(|(o, _)| studio.adapter_size(&o).map_err(|e| e.to_string())) {
            Ok(size) => view! {
                <p data-testid="adapter-size" data-params=size.params role="status">
                    <strong>{format::count(size.params)}</strong>" trainable parameters, "
                    <strong>{format::bytes(size.bytes as u64)}</strong>" adapter file, "
                    {format::percent(size.fraction)}" of the base model's "{format::count(studio.info.params)}"."
                </p>
            }
            .into_any(),
            Err(e) => view! { <p data-testid="settings-error" class="status-failed" role="alert">{e}</p> }.into_any(),
        })
    };
    // When the run would not fit a tab's GPU memory: what to change (a sentence from the engine).
    let memory_hint = move || {
        let studio = state.studio.get()?;
        let (o, s) = f.parse(studio.config()).ok()?;
        let hint = studio.memory_hint(&o, &s, s.max_memory.unwrap_or(TAB_GPU_MEMORY))?;
        Some(view! { <p data-testid="memory-hint" role="status">{hint}</p> })
    };
    view! {
        <section aria-labelledby="settings-heading">
            <h2 id="settings-heading">"3. Settings"</h2>
            <div class="fields">
                <Field id="rank" label="Rank r" help="Width of the low-rank update: more capacity, larger adapter." value=f.rank/>
                <Field id="alpha" label="Alpha α" help="Scales the update by α/r; 2·r is a common choice." value=f.alpha/>
                <Field id="lr" label="Learning rate" help="Step size of AdamW at its peak (5% warmup, then cosine decay)." value=f.lr step="any"/>
                <Field id="steps" label="Steps" help="Optimizer steps of the run." value=f.steps/>
                <Field id="batch" label="Batch" help="Windows of text per step." value=f.batch/>
                <Field id="seq-len" label="Sequence length" help="Tokens per window (at most the model's context)." value=f.seq_len/>
                <Field id="seed" label="Seed" help="Fixes the adapter's initialisation and the batch order." value=f.seed/>
                <Field id="early-stop" label="Stop early after N validations without improvement"
                    help="Validation runs about five times a run (every steps/5 steps, at least 5); the run ends after this many in a row without a lower loss, keeping the best adapter. Empty or 0: never." value=f.early_stop/>
                <Field id="max-memory" label="GPU memory limit (GiB)" help="A run that needs more is refused before it starts; 4 GiB is what a browser tab can count on." value=f.max_memory step="any"/>
            </div>
            <fieldset>
                <legend>"Layers to adapt"</legend>
                {target_box(Target::Q, "query")}
                {target_box(Target::K, "key")}
                {target_box(Target::V, "value")}
                {target_box(Target::O, "attention output")}
                {target_box(Target::Gate, "MLP gate")}
                {target_box(Target::Up, "MLP up")}
                {target_box(Target::Down, "MLP down")}
            </fieldset>
            <label for="grad-checkpoint" class="check">
                <input id="grad-checkpoint" type="checkbox" aria-describedby="grad-checkpoint-help"
                    prop:checked=move || f.grad_checkpoint.get()
                    on:change=move |ev| f.grad_checkpoint.set(event_target_checked(&ev))/>
                "Gradient checkpointing "
                <small id="grad-checkpoint-help">"Keeps only each layer's input and recomputes the rest while going backward: much less GPU memory, about a third more compute, the same result."</small>
            </label>
            {memory_hint}
            {verdict}
        </section>
    }
}
