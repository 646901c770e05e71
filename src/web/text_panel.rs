//! The training text: a text area, built-in examples, and the token count with the
//! train/validation split at the current sequence length (recomputed shortly after typing stops).

use std::time::Duration;

use leptos::prelude::*;

use super::examples::EXAMPLES;
use super::format;
use super::state::AppState;

#[component]
pub fn TextPanel() -> impl IntoView {
    let state = AppState::get();
    // Tokenize 250 ms after the last change, not on every keystroke.
    let generation = StoredValue::new(0u64);
    Effect::new(move |_| {
        let (text, seq_len, studio) = (state.text.get(), state.form.seq_len(), state.studio.get());
        let mine = generation.get_value() + 1;
        generation.set_value(mine);
        set_timeout(
            move || {
                if generation.get_value() != mine {
                    return;
                }
                let stats = match (studio, seq_len) {
                    (Some(s), Some(l)) => Some(s.text_stats(&text, l).map_err(|e| {
                        let e = e.to_string();
                        let mut c = e.chars();
                        c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or(e) + "."
                    })),
                    _ => None,
                };
                state.stats.set(stats);
            },
            Duration::from_millis(250),
        );
    });
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
    view! {
        <section aria-labelledby="text-heading">
            <h2 id="text-heading">"2. Text"</h2>
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
        </section>
    }
}
