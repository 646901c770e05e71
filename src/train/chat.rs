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

/// The file beside every adapter loratab writes (the CLI's folder, the page's zip, a TRL export)
/// that says what it was trained on ([`DataRecord`]). PEFT reads only adapter_config.json and
/// adapter_model.safetensors, so the folder still loads in PEFT unchanged.
pub const DATA_FILE: &str = "training_data.json";
/// What the CLI called the record of an examples run before it had one name everywhere: read back
/// when a folder has no [`DATA_FILE`], never written.
pub const OLD_DATA_FILE: &str = "sft_config.json";

/// What an adapter was trained on: a text cut into windows, or examples rendered with a chat
/// template (the model's own or the plain one, with its tokens), with or without the loss on the
/// answers only. What a run elsewhere needs to tokenize the same way. Field names are TRL's
/// (`SFTConfig.max_length`, `completion_only_loss`) and transformers' (`chat_template`,
/// `bos_token`, `eos_token`); the names older files used (`seq_len`, `mask_prompt`, no `data` in
/// the CLI's sft_config.json, which was only written for examples) are read back as these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataRecord {
    /// "text" (one text cut into windows) or "examples".
    #[serde(default = "DataRecord::examples_name")]
    pub data: String,
    /// For examples, what they were: "text" (`{"text"}` documents), "prompt_completion" or
    /// "messages" ([`super::examples::Kind::name`]); absent when they were of several kinds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Windows (text) or examples (cut to it) were this many tokens long.
    #[serde(alias = "seq_len")]
    pub max_length: usize,
    /// "model" (the model's own chat template) or "plain" ([`PLAIN_TEMPLATE`]); None for a text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The template's Jinja source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token: Option<String>,
    /// Loss on the answers only: prompt, system and user tokens labelled −100 (TRL's
    /// completion-only loss, MLX-LM's `--mask-prompt`). None for a text, where every token counts.
    #[serde(default, alias = "mask_prompt", skip_serializing_if = "Option::is_none")]
    pub completion_only_loss: Option<bool>,
}

impl DataRecord {
    fn examples_name() -> String {
        "examples".into()
    }

    /// A text cut into windows of `max_length` tokens.
    pub fn text(max_length: usize) -> Self {
        Self { data: "text".into(), format: None, max_length, template: None, chat_template: None, bos_token: None, eos_token: None, completion_only_loss: None }
    }

    /// Examples of `kind` (None: of several kinds, as a table's pairs beside a file of
    /// conversations) rendered with `template`, cut to `max_length` tokens.
    pub fn examples(kind: Option<super::examples::Kind>, template: &ChatTemplate, completion_only_loss: bool, max_length: usize) -> Self {
        Self {
            data: Self::examples_name(),
            format: kind.map(|k| k.name().into()),
            max_length,
            template: Some(if template.is_plain() { "plain" } else { "model" }.into()),
            chat_template: Some(template.source.clone()),
            bos_token: template.bos_token.clone(),
            eos_token: template.eos_token.clone(),
            completion_only_loss: Some(completion_only_loss),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain fields serialize")
    }

    /// The record in `bytes` (`file` names it in the sentence when it is not usable).
    pub fn from_json(file: &str, bytes: &[u8]) -> Result<Self, super::TrainError> {
        serde_json::from_slice(bytes).map_err(|e| super::TrainError::Record { file: file.to_string(), reason: e.to_string() })
    }
}

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
        match tok.config().map(Self::from_tokenizer_config).transpose()?.flatten() {
            Some(own) => Ok(own),
            None => Ok(Self::plain_for_model(tok, config)),
        }
    }

    /// [`PLAIN_TEMPLATE`] ended by the model's EOS token (tokenizer_config's `eos_token`, else the
    /// text of its first stop id; none when it has neither).
    pub fn plain_for_model(tok: &Tokenizer, config: &Config) -> Self {
        let named = tok.config().and_then(|c| c.as_object()).and_then(|c| token_field(c, "eos_token"));
        Self::plain(named.or_else(|| config.stop_ids.first().and_then(|&id| tok.id_to_token(id))))
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

    /// A record reads back as written, and the files older versions wrote (the page's zip with
    /// `seq_len`, the CLI's sft_config.json with `mask_prompt` and no `data`) read as the same facts.
    #[test]
    fn data_records_read_back_under_old_names() {
        let plain = ChatTemplate::plain(Some("<eos>".into()));
        let record = DataRecord::examples(Some(crate::train::Kind::Messages), &plain, false, 48);
        assert_eq!(DataRecord::from_json(DATA_FILE, record.to_json().as_bytes()).unwrap(), record);
        // A table's pairs beside a file of conversations are of no one kind.
        let (pair, chat) = (Record::Completion { prompt: "q".into(), completion: "a".into() }, Record::Chat(vec![]));
        assert_eq!(crate::train::Kind::of([&pair, &pair].into_iter()), Some(crate::train::Kind::Completion));
        assert_eq!(crate::train::Kind::of([&pair, &chat].into_iter()), None);
        let text = DataRecord::text(32);
        assert_eq!(serde_json::from_str::<Json>(&text.to_json()).unwrap(), serde_json::json!({"data": "text", "max_length": 32}));

        let old_page = serde_json::json!({"data": "examples", "seq_len": 48, "template": "plain", "chat_template": PLAIN_TEMPLATE, "eos_token": "<eos>", "completion_only_loss": false});
        let old_cli = serde_json::json!({"format": "messages", "template": "plain", "chat_template": PLAIN_TEMPLATE, "bos_token": null, "eos_token": "<eos>", "mask_prompt": false, "seq_len": 48});
        assert_eq!(DataRecord::from_json(DATA_FILE, old_page.to_string().as_bytes()).unwrap(), DataRecord { format: None, ..record.clone() });
        assert_eq!(DataRecord::from_json(OLD_DATA_FILE, old_cli.to_string().as_bytes()).unwrap(), record);
        let bad = DataRecord::from_json(DATA_FILE, b"{\"data\": \"text\"}").unwrap_err().to_string();
        assert!(bad.starts_with("training_data.json (what the adapter was trained on) is not usable: missing field `max_length`"), "{bad}");
    }

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

    /// A model's template comes from its tokenizer_config (golden ids for a question as one user
    /// turn with the generation prompt), and its stop ids are its EOS ids, its `eos_token` and the
    /// end-of-turn tokens its template writes; a model without a template gets the plain one,
    /// ended by the text of its EOS id.
    #[test]
    #[cfg(not(target_arch = "wasm32"))] // crate::bench is native
    fn a_models_template_and_stop_ids() {
        let golden = golden();
        let config = |stop_ids: Vec<u32>| crate::model::Config { stop_ids, ..crate::bench::model_config("default").unwrap() };
        // Added tokens: 0 <|endoftext|>, 2 <|im_end|>, 6 <|eot_id|>, 8 </s>.
        let stops = [("smollm2", vec![0, 2]), ("qwen2.5", vec![0, 2]), ("llama3", vec![0, 6]), ("mistral", vec![0, 8])];
        for (name, want) in stops {
            let t = &golden["templates"][name];
            let tc = serde_json::json!({"chat_template": t["template"], "bos_token": t["bos_token"], "eos_token": t["eos_token"]});
            let tok = tokenizer().with_config(Some(tc));
            assert_eq!(tok.stop_ids(&[0]), want, "{name}");
            let template = ChatTemplate::for_model(&tok, &config(want.clone())).unwrap();
            assert!(!template.is_plain(), "{name}");
            let case = golden["cases"].as_array().unwrap().iter().find(|c| {
                c["template"] == name && c["add_generation_prompt"] == true && c["messages"] == serde_json::json!([{"role": "user", "content": "Hi!"}])
            });
            let want_ids: Vec<u32> = case.unwrap()["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            assert_eq!(template.chat_prompt(&tok, "Hi!").unwrap(), want_ids, "{name}");
        }
        // No tokenizer_config: config.json's EOS only; the plain template ends answers with its text.
        let tok = tokenizer();
        assert_eq!(tok.stop_ids(&[8, 8]), [8]);
        let plain = ChatTemplate::for_model(&tok, &config(vec![8])).unwrap();
        assert!(plain.is_plain() && plain.eos_token.as_deref() == Some("</s>"));
        assert_eq!(tok.decode(&plain.chat_prompt(&tok, "Hi!").unwrap()).unwrap(), "Question: Hi!\nAnswer:");
        assert_eq!(ChatTemplate::for_model(&tok, &config(vec![])).unwrap().eos_token, None);
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
