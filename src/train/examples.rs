//! Instruction-tuning data: what a user's file holds, before any tokenizer sees it.
//!
//! Formats ([`parse`] tells them apart):
//! - plain text: the whole file is one document (today's training on text, unchanged);
//! - JSON Lines, one example per line, one kind per file:
//!   `{"text": …}` (one document per line, every token trained on),
//!   `{"prompt": …, "completion": …}` (trained on the completion only),
//!   `{"messages": [{"role": "system"|"user"|"assistant", "content": …}, …]}` (trained on the
//!   assistant messages only).
//!
//! Detection: a file whose first non-blank line starts with `{` is JSON Lines (a broken first line is
//! then reported as broken JSON rather than trained on as prose); anything else is plain text.
//! Blank lines in JSON Lines are skipped. The first good line fixes the kind; a later line of another
//! kind is a bad line. Bad lines never stop parsing: [`Parsed`] holds every good example with its
//! line number and every bad line with a sentence saying what is wrong, so nothing of the file is
//! dropped without the caller knowing.

use serde::Serialize;
use serde_json::Value;

/// Who says a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "system" => Some(Role::System),
            "user" => Some(Role::User),
            "assistant" => Some(Role::Assistant),
            _ => None,
        }
    }
}

/// One message of a conversation (serialized as chat templates read it: `role`, `content`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// One training example as the file gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A document trained on as a whole.
    Text(String),
    /// A prompt and the answer to learn (rendered as a user message and an assistant message).
    Completion { prompt: String, completion: String },
    /// A conversation; the assistant messages are what is learnt.
    Chat(Vec<Message>),
}

impl Record {
    /// The conversation a chat template renders (None for a document).
    pub fn messages(&self) -> Option<Vec<Message>> {
        match self {
            Record::Text(_) => None,
            Record::Completion { prompt, completion } => {
                Some(vec![Message::new(Role::User, prompt.clone()), Message::new(Role::Assistant, completion.clone())])
            }
            Record::Chat(m) => Some(m.clone()),
        }
    }

    /// Which of the three JSON Lines kinds this record is.
    pub fn kind(&self) -> Kind {
        match self {
            Record::Text(_) => Kind::Text,
            Record::Completion { .. } => Kind::Completion,
            Record::Chat(_) => Kind::Messages,
        }
    }
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    PlainText,
    /// JSON Lines of the given kind (None: no good line to tell).
    JsonLines(Option<Kind>),
}

/// The kind of a JSON Lines example.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Completion,
    Messages,
}

impl Kind {
    /// A short name for files and summaries: "text", "prompt_completion", "messages".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Completion => "prompt_completion",
            Kind::Messages => "messages",
        }
    }
}

impl Kind {
    /// The one kind of all `records` (None when they mix kinds, or there are none).
    pub fn of<'r>(mut records: impl Iterator<Item = &'r Record>) -> Option<Kind> {
        let first = records.next()?.kind();
        records.all(|r| r.kind() == first).then_some(first)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Text => "a {\"text\"} example",
            Kind::Completion => "a {\"prompt\", \"completion\"} example",
            Kind::Messages => "a {\"messages\"} conversation",
        })
    }
}

/// What is wrong with one line of a JSON Lines file (`line` counts from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line {line} is not valid JSON: {reason}")]
    Json { line: usize, reason: String },
    #[error("line {line} is not a JSON object ({{…}}): each line holds one example")]
    NotObject { line: usize },
    #[error("line {line} has none of the fields \"text\", \"prompt\" and \"completion\", or \"messages\"")]
    UnknownKind { line: usize },
    #[error("line {line} has \"{present}\" but no \"{missing}\"")]
    MissingField { line: usize, present: &'static str, missing: &'static str },
    #[error("line {line}: \"{field}\" must be a string")]
    NotString { line: usize, field: &'static str },
    #[error("line {line}: \"{field}\" is empty, so there is nothing to learn")]
    Empty { line: usize, field: &'static str },
    #[error("line {line}: \"messages\" must be a list of {{\"role\", \"content\"}} objects")]
    NotList { line: usize },
    #[error("line {line}: message {index} {problem}")]
    BadMessage { line: usize, index: usize, problem: String },
    #[error("line {line}: message {index} has role \"{role}\"; the roles are \"system\", \"user\" and \"assistant\"")]
    UnknownRole { line: usize, index: usize, role: String },
    #[error("line {line}: the conversation has no assistant message, so there is no answer to learn")]
    NoAnswer { line: usize },
    #[error("line {line}: assistant message {index} is empty")]
    EmptyAnswer { line: usize, index: usize },
    #[error("line {line} is {found}, but line {first} is {expected}; one file holds one kind of example")]
    Mixed { line: usize, found: Kind, expected: Kind, first: usize },
}

impl LineError {
    /// The line the problem is on (from 1).
    pub fn line(&self) -> usize {
        match *self {
            LineError::Json { line, .. }
            | LineError::NotObject { line }
            | LineError::UnknownKind { line }
            | LineError::MissingField { line, .. }
            | LineError::NotString { line, .. }
            | LineError::Empty { line, .. }
            | LineError::NotList { line }
            | LineError::BadMessage { line, .. }
            | LineError::UnknownRole { line, .. }
            | LineError::NoAnswer { line }
            | LineError::EmptyAnswer { line, .. }
            | LineError::Mixed { line, .. } => line,
        }
    }
}

/// A parsed file: its format, the good examples with their line numbers (1 for plain text), and
/// the bad lines.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub format: Format,
    pub records: Vec<(usize, Record)>,
    pub bad: Vec<LineError>,
}

/// Read a training file (see the module comment for the formats and the detection rule).
pub fn parse(input: &str) -> Parsed {
    let first = input.lines().map(str::trim).find(|l| !l.is_empty());
    if !first.is_some_and(|l| l.starts_with('{')) {
        return Parsed { format: Format::PlainText, records: vec![(1, Record::Text(input.to_string()))], bad: Vec::new() };
    }
    let mut records: Vec<(usize, Record)> = Vec::new();
    let mut bad = Vec::new();
    for (i, text) in input.lines().enumerate() {
        let line = i + 1;
        if text.trim().is_empty() {
            continue;
        }
        match parse_line(line, text) {
            Ok(record) => match records.first() {
                Some((first, r)) if r.kind() != record.kind() => {
                    bad.push(LineError::Mixed { line, found: record.kind(), expected: r.kind(), first: *first })
                }
                _ => records.push((line, record)),
            },
            Err(e) => bad.push(e),
        }
    }
    let kind = records.first().map(|(_, r)| r.kind());
    Parsed { format: Format::JsonLines(kind), records, bad }
}

fn string_field(line: usize, obj: &serde_json::Map<String, Value>, field: &'static str) -> Result<String, LineError> {
    match obj.get(field) {
        Some(Value::String(s)) if s.trim().is_empty() => Err(LineError::Empty { line, field }),
        Some(Value::String(s)) => Ok(s.clone()),
        _ => Err(LineError::NotString { line, field }),
    }
}

fn parse_line(line: usize, text: &str) -> Result<Record, LineError> {
    let value: Value = serde_json::from_str(text).map_err(|e| LineError::Json { line, reason: e.to_string() })?;
    let Value::Object(obj) = value else {
        return Err(LineError::NotObject { line });
    };
    if obj.contains_key("messages") {
        return parse_messages(line, &obj["messages"]);
    }
    match (obj.contains_key("prompt"), obj.contains_key("completion")) {
        (true, true) => {
            // An empty prompt is allowed (a completion with no context); an empty answer is not.
            let prompt = match obj.get("prompt") {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(LineError::NotString { line, field: "prompt" }),
            };
            Ok(Record::Completion { prompt, completion: string_field(line, &obj, "completion")? })
        }
        (true, false) => Err(LineError::MissingField { line, present: "prompt", missing: "completion" }),
        (false, true) => Err(LineError::MissingField { line, present: "completion", missing: "prompt" }),
        (false, false) if obj.contains_key("text") => Ok(Record::Text(string_field(line, &obj, "text")?)),
        (false, false) => Err(LineError::UnknownKind { line }),
    }
}

fn parse_messages(line: usize, value: &Value) -> Result<Record, LineError> {
    let Value::Array(list) = value else {
        return Err(LineError::NotList { line });
    };
    let mut messages = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let index = i + 1;
        let bad = |problem: &str| LineError::BadMessage { line, index, problem: problem.into() };
        let Value::Object(m) = m else {
            return Err(bad("is not a {\"role\", \"content\"} object"));
        };
        let role = match m.get("role") {
            Some(Value::String(r)) => Role::from_name(r).ok_or_else(|| LineError::UnknownRole { line, index, role: r.clone() })?,
            Some(_) => return Err(bad("has a \"role\" that is not a string")),
            None => return Err(bad("has no \"role\"")),
        };
        let content = match m.get("content") {
            Some(Value::String(c)) => c.clone(),
            Some(_) => return Err(bad("has a \"content\" that is not a string")),
            None => return Err(bad("has no \"content\"")),
        };
        if role == Role::Assistant && content.trim().is_empty() {
            return Err(LineError::EmptyAnswer { line, index });
        }
        messages.push(Message { role, content });
    }
    if !messages.iter().any(|m| m.role == Role::Assistant) {
        return Err(LineError::NoAnswer { line });
    }
    Ok(Record::Chat(messages))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_one_document() {
        let text = "It is a truth universally acknowledged,\n{not json}\n";
        let p = parse(text);
        assert_eq!(p.format, Format::PlainText);
        assert_eq!(p.records, vec![(1, Record::Text(text.into()))]);
        assert!(p.bad.is_empty());
    }

    #[test]
    fn each_kind_parses() {
        let p = parse("{\"text\": \"one\"}\n\n{\"text\": \"two\"}\n");
        assert_eq!(p.format, Format::JsonLines(Some(Kind::Text)));
        assert_eq!(p.records, vec![(1, Record::Text("one".into())), (3, Record::Text("two".into()))]);
        let p = parse(r#"{"prompt": "2+2?", "completion": " 4"}"#);
        assert_eq!(p.records, vec![(1, Record::Completion { prompt: "2+2?".into(), completion: " 4".into() })]);
        let p = parse(r#"  {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello ✓"}]}"#);
        let want = vec![Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi"), Message::new(Role::Assistant, "Hello ✓")];
        assert_eq!(p.records, vec![(1, Record::Chat(want))]);
        assert_eq!(p.format, Format::JsonLines(Some(Kind::Messages)));
    }

    /// Every kind of bad line gives a sentence naming its line, and the good lines around it survive.
    #[test]
    fn bad_lines_are_named_and_the_rest_kept() {
        let lines = [
            r#"{"prompt": "a", "completion": "b"}"#,
            r#"{"prompt": "a", "completion": "b""#,
            r#"["prompt", "completion"]"#,
            r#"{"question": "a"}"#,
            r#"{"prompt": "a"}"#,
            r#"{"completion": "b"}"#,
            r#"{"prompt": "a", "completion": 3}"#,
            r#"{"prompt": "a", "completion": "  "}"#,
            r#"{"messages": [{"role": "bot", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}"#,
            r#"{"messages": [{"role": "user"}]}"#,
            r#"{"messages": "hello"}"#,
            r#"{"text": "a document"}"#,
            r#"{"prompt": "c", "completion": "d"}"#,
        ];
        let p = parse(&lines.join("\n"));
        assert_eq!(p.format, Format::JsonLines(Some(Kind::Completion)));
        let good: Vec<usize> = p.records.iter().map(|(l, _)| *l).collect();
        assert_eq!(good, [1, 15]);
        let said: Vec<(usize, String)> = p.bad.iter().map(|e| (e.line(), e.to_string())).collect();
        let expected = [
            (2, "line 2 is not valid JSON"),
            (3, "line 3 is not a JSON object"),
            (4, "line 4 has none of the fields"),
            (5, "line 5 has \"prompt\" but no \"completion\""),
            (6, "line 6 has \"completion\" but no \"prompt\""),
            (7, "line 7: \"completion\" must be a string"),
            (8, "line 8: \"completion\" is empty"),
            (9, "line 9: message 1 has role \"bot\""),
            (10, "line 10: the conversation has no assistant message"),
            (11, "line 11: assistant message 2 is empty"),
            (12, "line 12: message 1 has no \"content\""),
            (13, "line 13: \"messages\" must be a list"),
            (14, "line 14 is a {\"text\"} example, but line 1 is a {\"prompt\", \"completion\"} example; one file"),
        ];
        assert_eq!(said.len(), expected.len(), "{said:#?}");
        for ((line, sentence), (want_line, start)) in said.iter().zip(expected) {
            assert_eq!(*line, want_line);
            assert!(sentence.starts_with(start), "line {line}: {sentence:?} should start with {start:?}");
        }
    }

    #[test]
    fn a_broken_first_line_is_not_prose() {
        let p = parse("{\"text\": \"unterminated\n{\"text\": \"fine\"}\n");
        assert_eq!(p.format, Format::JsonLines(Some(Kind::Text)));
        assert_eq!(p.records.len(), 1);
        assert_eq!(p.bad.iter().map(LineError::line).collect::<Vec<_>>(), [1]);
    }
}
