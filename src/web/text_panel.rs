//! The training data: a Text / Examples switch. Text: a text area, built-in texts, and the token
//! count with the train/validation split at the current sequence length (recomputed shortly after
//! typing stops). Examples: [`ExamplesEditor`].

use std::time::Duration;

use leptos::prelude::*;

use super::examples::EXAMPLES;
use super::examples_panel::ExamplesEditor;
use super::format;
use super::state::{AppState, DataMode};
use crate::studio::{Studio, StudioError};

/// Keep `stats` at `count(studio, input, seq_len)`, recomputed 250 ms after the last change of
/// what `input` reads (not on every keystroke); None while no model is loaded or the sequence
/// length is not a number.
pub(super) fn count_after_typing<I, S>(
    input: impl Fn() -> I + 'static,
    count: impl Fn(&Studio, &I, usize) -> Result<S, StudioError> + Copy + 'static,
    stats: RwSignal<Option<Result<S, String>>>,
) where
    I: 'static,
    S: Send + Sync + 'static,
{
    let state = AppState::get();
    let generation = StoredValue::new(0u64);
    Effect::new(move |_| {
        let (input, seq_len, studio) = (input(), state.form.seq_len(), state.studio.get());
        let mine = generation.get_value() + 1;
        generation.set_value(mine);
        set_timeout(
            move || {
                if generation.get_value() == mine {
                    stats.set(studio.zip(seq_len).map(|(s, l)| count(&s, &input, l).map_err(format::sentence)));
                }
            },
            Duration::from_millis(250),
        );
    });
}

#[component]
pub fn TextPanel() -> impl IntoView {
    let state = AppState::get();
    count_after_typing(move || state.text.get(), |studio, text, l| studio.text_stats(text, l), state.stats);
    let summary = move || match state.stats.get() {
        None => view! { <p data-testid="text-stats" data-tokens="">"Counting tokens…"</p> }.into_any(),
        Some(Ok(s)) => view! {
            <p data-testid="text-stats" data-tokens=s.tokens>
                {format!(
                    "{} tokens: {} training windows of {} tokens, {} held out for validation ({} tokens).",
                    format::count(s.tokens), s.train_windows, s.seq_len, s.validation_windows, s.validation_tokens
                )}
            </p>
        }
        .into_any(),
        Some(Err(e)) => view! { <p data-testid="text-stats" data-tokens="" class="status-failed" role="alert">{e}</p> }.into_any(),
    };
    let mode = state.data.mode;
    let switch = move |m: DataMode, id: &'static str, label: &'static str| {
        view! {
            <label for=id class="check">
                <input id=id type="radio" name="data-mode" data-testid=id
                    prop:checked=move || mode.get() == m on:change=move |_| mode.set(m)/>
                {label}
            </label>
        }
    };
    // The text area stays in the page (hidden) while examples are shown: nothing typed is lost.
    view! {
        <section aria-labelledby="text-heading">
            <h2 id="text-heading">"2. Text"</h2>
            <fieldset>
                <legend>"Train on"</legend>
                {switch(DataMode::Text, "mode-text", "Text")}
                {switch(DataMode::Examples, "mode-examples", "Examples (prompt → answer)")}
            </fieldset>
            <div hidden=move || mode.get() != DataMode::Text>
                <p class="hint">"Paste the text to fine-tune on. Its last tenth is held out to measure the validation loss."</p>
                <div class="examples" role="group" aria-label="Example texts">
                    {EXAMPLES.iter().map(|ex| view! {
                        <button type="button" on:click=move |_| state.text.set(ex.text.to_string())>{ex.title}</button>
                    }).collect_view()}
                    <button type="button" on:click=move |_| state.text.set(String::new())>"Clear"</button>
                </div>
                <label for="train-text">"Training text"</label>
                <textarea id="train-text" data-testid="text" rows="10" spellcheck="false"
                    prop:value=move || state.text.get()
                    on:input=move |ev| state.text.set(event_target_value(&ev))></textarea>
                {summary}
            </div>
            {move || (mode.get() == DataMode::Examples).then(|| view! { <div data-testid="examples-editor"><ExamplesEditor/></div> })}
        </section>
    }
}
