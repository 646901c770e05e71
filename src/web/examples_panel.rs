//! The Examples side of the data panel: a table of prompt → answer rows, a pasted or dropped JSON
//! Lines file (text, prompt/completion or messages per line; bad lines listed by number while the
//! rest is used), the chat template in use, the answer-only switch, and the counts at the current
//! sequence length (recomputed shortly after typing stops).

use leptos::prelude::*;
use leptos::task::spawn_local;

use super::browser;
use super::examples::EXAMPLE_PAIRS;
use super::format;
use super::state::AppState;
use super::text_panel::count_after_typing;

/// Read the first of `files` into the JSON Lines box.
fn load_file(state: AppState, file: Option<web_sys::File>) {
    let Some(file) = file else { return };
    spawn_local(async move {
        match browser::read_text(&file).await {
            Ok(text) => {
                state.data.file_name.set(file.name());
                state.data.jsonl.set(text);
            }
            Err(e) => state.data.file_name.set(format!("{}: {e}", file.name())),
        }
    });
}

#[component]
pub fn ExamplesEditor() -> impl IntoView {
    let state = AppState::get();
    let data = state.data;
    // Parsed once per change for everything below.
    let gathered = Memo::new(move |_| data.gather());
    count_after_typing(move || gathered.get().set, |studio, set, l| studio.example_stats(set, l), data.stats);
    let problems = move || gathered.with(|g| g.problems.clone());
    let from_file = move || gathered.with(|g| g.from_file);
    let rows = move || {
        let rows = data.rows.get();
        rows.iter()
            .enumerate()
            .map(|(i, row)| {
                let (n, id) = (i + 1, row.id);
                let (prompt, answer) = (row.prompt, row.answer);
                view! {
                    <tr data-testid="example-row">
                        <td>{n}</td>
                        <td><input type="text" aria-label=format!("Prompt {n}") data-testid="row-prompt"
                            prop:value=move || prompt.get() on:input=move |ev| prompt.set(event_target_value(&ev))/></td>
                        <td><input type="text" aria-label=format!("Answer {n}") data-testid="row-answer"
                            prop:value=move || answer.get() on:input=move |ev| answer.set(event_target_value(&ev))/></td>
                        <td><button type="button" aria-label=format!("Remove row {n}") on:click=move |_| data.remove_row(id)>"×"</button></td>
                    </tr>
                }
            })
            .collect_view()
    };
    let stats = move || match data.stats.get() {
        None => view! { <p data-testid="example-stats" data-examples="">"Counting tokens…"</p> }.into_any(),
        Some(Ok(s)) => {
            let seq = state.form.seq_len().unwrap_or(0);
            let mut text = format!(
                "{} examples: {} to train on, {} held out for validation; {} tokens, {} of them learnt.",
                s.examples, s.train, s.validation, format::count(s.tokens), format::count(s.learnt)
            );
            if s.truncated > 0 {
                text += &format!(" {} cut to the sequence length of {seq} tokens.", s.truncated);
            }
            if s.dropped > 0 {
                text += &format!(" {} left out: nothing to learn within {seq} tokens.", s.dropped);
            }
            let failed = s.failed.clone();
            view! {
                <p data-testid="example-stats" data-examples=s.examples data-truncated=s.truncated data-dropped=s.dropped>{text}</p>
                {(!failed.is_empty()).then(|| view! {
                    <ul class="status-failed" role="alert">{failed.into_iter().map(|f| view! { <li>{f}</li> }).collect_view()}</ul>
                })}
            }
            .into_any()
        }
        Some(Err(e)) => view! { <p data-testid="example-stats" data-examples="" class="status-failed" role="alert">{e}</p> }.into_any(),
    };
    // The template in use, and the first example as the model will read it.
    let template = move || {
        let studio = state.studio.get()?;
        let t = &match studio.chat_template() {
            Ok(t) => t,
            Err(e) => return Some(view! { <p class="status-failed" role="alert">{format::sentence(e)}</p> }.into_any()),
        };
        let source = t.source.clone();
        let kind = if studio.has_own_template() { "the model's own chat template" } else { "the plain template (this model has no chat template of its own)" };
        let first = gathered.with(|g| g.set.records.first().cloned()).and_then(|(_, r)| r.messages()).and_then(|m| t.render(&m, false).ok());
        Some(
            view! {
                <details data-testid="template" data-own=if studio.has_own_template() { "true" } else { "false" }>
                    <summary>"Rendered with "{kind}</summary>
                    <pre class="template">{source}</pre>
                    {first.map(|f| view! { <p>"The first example as the model reads it:"</p><pre class="template" data-testid="rendered-example">{f}</pre> })}
                </details>
            }
            .into_any(),
        )
    };
    let (over, set_over) = signal(false);
    let on_drop = move |ev: leptos::ev::DragEvent| {
        ev.prevent_default();
        set_over.set(false);
        load_file(state, ev.data_transfer().and_then(|d| d.files()).and_then(|f| f.get(0)));
    };
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = event_target(&ev);
        load_file(state, input.files().and_then(|f| f.get(0)));
    };
    view! {
        <p class="hint">"Prompt → answer pairs: the model learns to give the answers. One example in ten is held out to measure the validation loss."</p>
        <div class="examples" role="group" aria-label="Example sets">
            <button type="button" on:click=move |_| data.use_pairs(EXAMPLE_PAIRS.text)>{EXAMPLE_PAIRS.title}</button>
            <button type="button" data-testid="clear-examples" on:click=move |_| data.clear()>"Clear"</button>
        </div>
        <table class="example-rows" data-testid="example-rows">
            <thead><tr><th>"#"</th><th>"Prompt"</th><th>"Answer"</th><th><span class="visually-hidden">"Remove"</span></th></tr></thead>
            <tbody>{rows}</tbody>
        </table>
        <button type="button" data-testid="add-row" on:click=move |_| data.add_row()>"Add a row"</button>
        <div data-testid="jsonl-drop" class=move || if over.get() { "dropzone over" } else { "dropzone" }
            on:dragover=move |ev: leptos::ev::DragEvent| { ev.prevent_default(); set_over.set(true); }
            on:dragleave=move |_| set_over.set(false)
            on:drop=on_drop>
            <label for="jsonl">"More examples from a .jsonl file: paste it, drop it here, or "</label>
            <label>"choose it "<input type="file" accept=".jsonl,.json,.txt" on:change=on_pick/></label>
            <small>" One example per line: {\"prompt\", \"completion\"}, {\"messages\": [{\"role\", \"content\"}, …]} or {\"text\"}."</small>
            <textarea id="jsonl" data-testid="jsonl" rows="4" spellcheck="false"
                prop:value=move || data.jsonl.get()
                on:input=move |ev| { data.file_name.set(String::new()); data.jsonl.set(event_target_value(&ev)); }></textarea>
            {move || {
                let name = data.file_name.get();
                let n = from_file();
                (!data.jsonl.get().trim().is_empty()).then(|| {
                    let from = if name.is_empty() { "the pasted lines".to_string() } else { name };
                    view! { <p data-testid="jsonl-summary" data-examples=n>{format!("{n} examples from {from}.")}</p> }
                })
            }}
        </div>
        {move || {
            let p = problems();
            (!p.is_empty()).then(|| view! {
                <ul data-testid="example-problems" class="status-failed" role="alert">{p.into_iter().map(|s| view! { <li>{s}</li> }).collect_view()}</ul>
            })
        }}
        <label for="answers-only" class="check">
            <input id="answers-only" type="checkbox" data-testid="answers-only"
                prop:checked=move || data.answers_only.get()
                on:change=move |ev| data.answers_only.set(event_target_checked(&ev))/>
            "Loss on answers only "
            <small>"The prompt's tokens are read but not learnt (TRL's completion-only loss): the model learns to answer, not to ask."</small>
        </label>
        {template}
        {stats}
    }
}
