//! Chat templates: a model's Jinja `chat_template` (tokenizer_config.json's `chat_template`, which a
//! GGUF's `tokenizer.chat_template` becomes on import) rendered with minijinja as transformers
//! renders it (trim_blocks, lstrip_blocks, loop controls, Python string methods through
//! minijinja-contrib's pycompat, `raise_exception`; variables `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`), then tokenized with the special tokens written in the text recognised
//! and nothing added: the ids of `apply_chat_template(messages, tokenize=True, …)`. (`tojson` is
//! minijinja's, which escapes `<`, `>`, `&` and `'` where transformers' does not: it only appears in
//! tool-calling branches.)
//!
//! Answer-only labels ([`ChatTemplate::example`]): the whole conversation is rendered and tokenized
//! once; assistant message i's span is the text between render(messages[..i], add_generation_prompt =
//! true) and render(messages[..=i]), both of which must be prefixes of the whole rendering (else
//! [`TemplateError::NotPrefix`]). A token is learnt (its label is its id) if its bytes overlap a span,
//! else its label is [`IGNORE`]: the system and user messages and the template's scaffolding around
//! them, and each assistant header, are not; the answer and what the template closes it with (ChatML's
//! `<|im_end|>\n`, Llama-3's `<|eot_id|>`, an EOS) are, so the model learns to stop. Overlap rather
//! than containment, so a first answer token that carries the space after `Answer:` is learnt.

use serde_json::{Map, Value as Json};

use super::data::Example;
use super::examples::{Message, Record, Role};
use crate::model::{Config, ModelError, Tokenizer};
use crate::reference::cross_entropy::IGNORE;

/// The template of a model that has none (such as the default austen-5m): a system message as a
/// paragraph, then `Question: …` / `Answer: …` lines, each answer ended by the EOS token; the
/// generation prompt is `Answer:`.
pub const PLAIN_TEMPLATE: &str = "{%- for message in messages %}\
{%- if not loop.first %}{{ '\\n' }}{% endif %}\
{%- if message.role == 'system' %}{{ message.content }}{{ '\\n' }}\
{%- elif message.role == 'user' %}{{ 'Question: ' ~ message.content }}\
{%- else %}{{ 'Answer: ' ~ message.content }}{{ eos_token }}\
{%- endif %}\
{%- endfor %}\
{%- if add_generation_prompt %}{{ '\\nAnswer:' if messages else 'Answer:' }}{% endif %}";

/// What can go wrong turning a conversation into tokens.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the chat template is not valid Jinja: {0}")]
    Syntax(String),
    #[error("the chat template refused the conversation: {0}")]
    Refused(String),
    #[error("the chat template failed: {0}")]
    Render(String),
    #[error("tokenizer_config.json is not usable: {0}")]
    Config(String),
    #[error("the chat template renders the conversation before assistant message {index} differently from the whole conversation, so its answer cannot be told from the prompt")]
    NotPrefix { index: usize },
    #[error("the tokenizer has no token `{0}` (the template's end-of-sequence token)")]
    UnknownToken(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A compiled chat template with the special tokens it is given.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    pub source: String,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("bos_token", &self.bos_token).field("eos_token", &self.eos_token).finish_non_exhaustive()
    }
}

/// `raise_exception(message)`: what templates call to refuse a conversation.
fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
}

/// A special token in tokenizer_config.json: a string, or an object with its `content`.
fn token_field(config: &Map<String, Json>, key: &str) -> Option<String> {
    match config.get(key)? {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    pub fn new(source: impl Into<String>, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self, TemplateError> {
        let source = source.into();
        let mut env = minijinja::Environment::new();
        // transformers' Jinja environment: trim_blocks, lstrip_blocks, loopcontrols.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.clone()).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        Ok(Self { env, source, bos_token, eos_token })
    }

    /// [`PLAIN_TEMPLATE`] with the model's end-of-sequence token (None: answers end with nothing).
    pub fn plain(eos_token: Option<String>) -> Self {
        Self::new(PLAIN_TEMPLATE, None, eos_token).expect("the plain template compiles")
    }

    /// The template of tokenizer_config.json (its `chat_template`: a string, or a list of named
    /// templates of which "default" is taken), with its `bos_token` and `eos_token`; None when it has
    /// no template.
    pub fn from_tokenizer_config(config: &Json) -> Result<Option<Self>, TemplateError> {
        let Json::Object(c) = config else {
            return Err(TemplateError::Config("it is not a JSON object".into()));
        };
        let source = match c.get("chat_template") {
            None | Some(Json::Null) => return Ok(None),
            Some(Json::String(s)) => s.clone(),
            Some(Json::Array(list)) => {
                let named = |name: &str| list.iter().find(|t| t.get("name").and_then(Json::as_str) == Some(name));
                named("default")
                    .or(list.first())
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| TemplateError::Config("`chat_template` is a list without a usable template".into()))?
                    .to_string()
            }
            Some(_) => return Err(TemplateError::Config("`chat_template` is neither a string nor a list of templates".into())),
        };
        Self::new(source, token_field(c, "bos_token"), token_field(c, "eos_token")).map(Some)
    }

    /// The template a model chats with: its own (tokenizer_config.json's `chat_template`, a GGUF's
    /// `tokenizer.chat_template`), else [`PLAIN_TEMPLATE`] ended by its EOS token (tokenizer_config's
    /// `eos_token`, else the text of its first stop id; none when it has neither).
    pub fn for_model(tok: &Tokenizer, config: &Config) -> Result<Self, TemplateError> {
        if let Some(own) = tok.config().map(Self::from_tokenizer_config).transpose()?.flatten() {
            return Ok(own);
        }
        let named = tok.config().and_then(|c| c.as_object()).and_then(|c| token_field(c, "eos_token"));
        Ok(Self::plain(named.or_else(|| config.stop_ids.first().and_then(|&id| tok.id_to_token(id)))))
    }

    /// True for [`PLAIN_TEMPLATE`] (the model has no template of its own).
    pub fn is_plain(&self) -> bool {
        self.source == PLAIN_TEMPLATE
    }

    /// The ids of `prompt` as one user turn followed by the assistant's header
    /// (`apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)`):
    /// what `loratab generate --chat` and the page's Compare feed the model.
    pub fn chat_prompt(&self, tok: &Tokenizer, prompt: &str) -> Result<Vec<u32>, TemplateError> {
        self.encode(tok, &[Message::new(Role::User, prompt)], true)
    }

    /// The text of `messages` (and the assistant header when `add_generation_prompt`).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, TemplateError> {
        let mut vars = Map::new();
        vars.insert("messages".into(), serde_json::to_value(messages).expect("messages serialize"));
        vars.insert("add_generation_prompt".into(), Json::Bool(add_generation_prompt));
        // Absent tokens stay undefined (rendering as nothing), as transformers leaves them.
        for (key, token) in [("bos_token", &self.bos_token), ("eos_token", &self.eos_token)] {
            if let Some(t) = token {
                vars.insert(key.into(), Json::String(t.clone()));
            }
        }
        let template = self.env.get_template("chat").expect("added in new");
        template.render(minijinja::Value::from_serialize(&vars)).map_err(|e| match (e.kind(), e.detail()) {
            (minijinja::ErrorKind::InvalidOperation, Some(detail)) => TemplateError::Refused(detail.to_string()),
            _ => TemplateError::Render(e.to_string()),
        })
    }

    /// The ids of `messages` rendered: transformers' `apply_chat_template(messages, tokenize=True,
    /// add_generation_prompt=…)`.
    pub fn encode(&self, tok: &Tokenizer, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>, TemplateError> {
        Ok(tok.encode_with_offsets(&self.render(messages, add_generation_prompt)?)?.0)
    }

    /// A conversation's ids with labels on its assistant messages only (see the module comment).
    pub fn chat_example(&self, tok: &Tokenizer, messages: &[Message]) -> Result<Example, TemplateError> {
        let full = self.render(messages, false)?;
        let mut spans = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(TemplateError::NotPrefix { index: i + 1 });
            }
            spans.push((before.len(), through.len()));
        }
        let (ids, offsets) = tok.encode_with_offsets(&full)?;
        let labels = ids
            .iter()
            .zip(&offsets)
            .map(|(&id, &(s, e))| if spans.iter().any(|&(a, b)| s < b && e > a) { id } else { IGNORE })
            .collect();
        Ok(Example { ids, labels })
    }

    /// One record as a training example: a document is learnt whole (with the EOS token after it
    /// when the template has one); a prompt/completion pair and a conversation through
    /// [`ChatTemplate::chat_example`].
    pub fn example(&self, tok: &Tokenizer, record: &Record) -> Result<Example, TemplateError> {
        match record {
            Record::Text(text) => {
                let mut ids = tok.encode(text)?;
                if let Some(eos) = &self.eos_token {
                    ids.push(tok.token_to_id(eos).ok_or_else(|| TemplateError::UnknownToken(eos.clone()))?);
                }
                Ok(Example { labels: ids.clone(), ids })
            }
            _ => self.chat_example(tok, &record.messages().expect("not a document")),
        }
    }

    /// Every record as an example, and the line and error of each that could not be made.
    pub fn examples(&self, tok: &Tokenizer, records: &[(usize, Record)]) -> (Vec<Example>, Vec<(usize, TemplateError)>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (line, record) in records {
            match self.example(tok, record) {
                Ok(e) => good.push(e),
                Err(e) => bad.push((*line, e)),
            }
        }
        (good, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::examples::Role;

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_bytes(include_bytes!("../../tests/fixtures/chat/tokenizer.json")).unwrap()
    }

    fn golden() -> Json {
        serde_json::from_str(include_str!("../../tests/fixtures/chat/golden.json")).unwrap()
    }

    /// A conversation written as JSON (prefixes without an answer included, which `parse` refuses).
    fn messages(v: &Json) -> Vec<Message> {
        let role = |r: &str| match r {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            _ => panic!("role {r}"),
        };
        v.as_array().unwrap().iter().map(|m| Message::new(role(m["role"].as_str().unwrap()), m["content"].as_str().unwrap())).collect()
    }

    /// Text and ids equal transformers' apply_chat_template (tools/golden_sft.py) for SmolLM2's,
    /// Qwen2.5's, Llama-3's and Mistral's templates: system messages, several turns, unicode,
    /// `| trim`, `.strip()`, with and without the generation prompt.
    #[test]
    fn templates_match_transformers() {
        let (golden, tok) = (golden(), tokenizer());
        let cases = golden["cases"].as_array().unwrap();
        assert!(cases.len() >= 20, "{} cases", cases.len());
        let mut seen = std::collections::BTreeSet::new();
        for case in cases {
            let name = case["template"].as_str().unwrap();
            let t = &golden["templates"][name];
            let text = |k: &str| t[k].as_str().map(str::to_string);
            let template = ChatTemplate::new(text("template").unwrap(), text("bos_token"), text("eos_token")).unwrap();
            let msgs = messages(&case["messages"]);
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let what = format!("{name} conversation {} (generation prompt {agp})", case["conversation"]);
            assert_eq!(template.render(&msgs, agp).unwrap(), case["text"].as_str().unwrap(), "{what}");
            let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(template.encode(&tok, &msgs, agp).unwrap(), want, "{what}");
            seen.insert(name);
        }
        assert_eq!(seen.len(), 4);
    }

    /// The learnt tokens of each template are exactly its assistant messages with what closes them.
    #[test]
    fn labels_cover_the_answers_only() {
        let (golden, tok) = (golden(), tokenizer());
        let conversation = messages(&serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Two plus two?"},
            {"role": "assistant", "content": "Four."},
            {"role": "user", "content": "Times three?"},
            {"role": "assistant", "content": "Twelve ✓"},
        ]));
        let closing = [("smollm2", "<|im_end|>\n"), ("qwen2.5", "<|im_end|>\n"), ("llama3", "<|eot_id|>")];
        for (name, end) in closing {
            let t = &golden["templates"][name];
            let text = |k: &str| t[k].as_str().map(str::to_string);
            let template = ChatTemplate::new(text("template").unwrap(), text("bos_token"), text("eos_token")).unwrap();
            let ex = template.chat_example(&tok, &conversation).unwrap();
            assert_eq!(ex.ids, template.encode(&tok, &conversation, false).unwrap(), "{name}");
            assert_eq!(ex.labels.len(), ex.ids.len());
            let learnt: Vec<u32> = ex.labels.iter().copied().filter(|&l| l != IGNORE).collect();
            assert_eq!(tok.decode(&learnt).unwrap(), format!("Four.{end}Twelve ✓{end}"), "{name}");
        }
        let plain = ChatTemplate::plain(Some("<|endoftext|>".into()));
        let rendered = plain.render(&conversation, false).unwrap();
        assert_eq!(rendered, "Be brief.\n\nQuestion: Two plus two?\nAnswer: Four.<|endoftext|>\nQuestion: Times three?\nAnswer: Twelve ✓<|endoftext|>");
        assert_eq!(plain.render(&conversation[..4], true).unwrap(), "Be brief.\n\nQuestion: Two plus two?\nAnswer: Four.<|endoftext|>\nQuestion: Times three?\nAnswer:");
        let ex = plain.chat_example(&tok, &conversation).unwrap();
        let learnt: Vec<u32> = ex.labels.iter().copied().filter(|&l| l != IGNORE).collect();
        assert_eq!(tok.decode(&learnt).unwrap(), " Four.<|endoftext|> Twelve ✓<|endoftext|>");
    }

    #[test]
    fn config_errors_and_refusals_are_sentences() {
        let config = serde_json::json!({
            "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System messages are not supported') }}{% endif %}{{ m.content.upper() }}{% endfor %}"}],
            "bos_token": {"content": "<s>"},
            "eos_token": "</s>",
        });
        let t = ChatTemplate::from_tokenizer_config(&config).unwrap().unwrap();
        assert_eq!((t.bos_token.as_deref(), t.eos_token.as_deref()), (Some("<s>"), Some("</s>")));
        assert_eq!(t.render(&[Message::new(Role::User, "hi")], false).unwrap(), "<s>HI");
        let err = t.render(&[Message::new(Role::System, "x")], false).unwrap_err();
        assert_eq!(err.to_string(), "the chat template refused the conversation: System messages are not supported");
        assert!(ChatTemplate::from_tokenizer_config(&serde_json::json!({"eos_token": "</s>"})).unwrap().is_none());
        let err = ChatTemplate::new("{% for m in messages %}", None, None).unwrap_err();
        assert!(err.to_string().starts_with("the chat template is not valid Jinja"), "{err}");
    }
}
