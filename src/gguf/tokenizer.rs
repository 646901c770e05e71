//! A GGUF vocabulary (`tokenizer.ggml.*`) → tokenizer.json + tokenizer_config.json. Only byte-level
//! BPE (`tokenizer.ggml.model` "gpt2") with a pre-tokenizer whose split is known exactly.

use std::collections::HashSet;

use serde_json::{json, Map, Value as Json};

use super::import::Meta;
use super::{GgufError, Value};

/// llama.cpp's token types (llama_token_type).
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// GPT-2's 256 byte symbols (bytes_to_unicode): printable bytes stand for themselves, the others
/// are shifted to U+0100 and up.
fn byte_alphabet() -> HashSet<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut shifted = 0;
    (0..256u32)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("a Latin-1 code point")
            } else {
                shifted += 1;
                char::from_u32(255 + shifted).expect("a code point below U+0200")
            }
        })
        .collect()
}

/// The pre-tokenizer that splits text as llama.cpp's `tokenizer.ggml.pre` does.
fn pre_tokenizer(pre: &str) -> Result<Json, GgufError> {
    let byte_level = json!({ "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true });
    match pre {
        "gpt2" => Ok(byte_level),
        // llama.cpp splits off every digit (\p{N}) first, then applies GPT-2's regex; SmolLM2's own
        // tokenizer.json says the same with these two steps.
        "smollm" => Ok(json!({
            "type": "Sequence",
            "pretokenizers": [{ "type": "Digits", "individual_digits": true }, byte_level],
        })),
        other => Err(GgufError::Tokenizer(format!(
            "tokenizer.ggml.pre `{other}` is not supported (loratab knows gpt2 and smollm)"
        ))),
    }
}

fn strings<'v>(items: &'v [Value], key: &str) -> Result<Vec<&'v str>, GgufError> {
    items
        .iter()
        .map(|v| v.as_str().ok_or_else(|| GgufError::KeyType { key: key.into(), expected: "an array of strings" }))
        .collect()
}

/// tokenizer.json and tokenizer_config.json for the file's vocabulary.
/// `rows`: the embedding's; a vocabulary longer than that would index past it.
pub(super) fn convert(m: &Meta, rows: usize, context: usize) -> Result<(Json, Json), GgufError> {
    let model = m.str("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(GgufError::Tokenizer(format!(
            "tokenizer.ggml.model `{model}` is not supported (loratab imports byte-level BPE vocabularies, `gpt2`)"
        )));
    }
    let pre = pre_tokenizer(m.str("tokenizer.ggml.pre")?)?;
    let tokens = strings(m.array("tokenizer.ggml.tokens")?, "tokenizer.ggml.tokens")?;
    let types: Vec<i64> = match m.0.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(_) => m
            .array("tokenizer.ggml.token_type")?
            .iter()
            .map(|v| v.as_int().ok_or_else(|| GgufError::KeyType { key: "tokenizer.ggml.token_type".into(), expected: "an array of integers" }))
            .collect::<Result<_, _>>()?,
    };
    if tokens.len() > rows {
        return Err(GgufError::Tokenizer(format!(
            "it has {} tokens but token_embd.weight has only {rows} rows",
            tokens.len()
        )));
    }
    if types.len() != tokens.len() {
        return Err(GgufError::Tokenizer(format!("{} token types for {} tokens", types.len(), tokens.len())));
    }
    let merges = strings(m.array("tokenizer.ggml.merges")?, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, merge)| match merge.split(' ').collect::<Vec<_>>()[..] {
            [a, b] if !a.is_empty() && !b.is_empty() => Ok(json!([a, b])),
            _ => Err(GgufError::Tokenizer(format!("merge #{i} `{merge}` is not two tokens separated by a space"))),
        })
        .collect::<Result<Vec<_>, _>>()?;

    let alphabet = byte_alphabet();
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&token, &kind)) in tokens.iter().zip(&types).enumerate() {
        let special = matches!(kind, UNKNOWN | CONTROL);
        if special || kind == USER_DEFINED {
            // llama.cpp stores added tokens as their text; they match whole, before BPE.
            added.push(json!({
                "id": id, "content": token, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": special,
            }));
        }
        // A text outside the byte alphabet (an added token with a space, say) is no BPE symbol: it
        // lives only among the added tokens. A repeated text keeps its first id, as a map must.
        if token.chars().all(|c| alphabet.contains(&c)) && !vocab.contains_key(token) {
            vocab.insert(token.to_string(), json!(id));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true },
        "decoder": { "type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true },
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        },
    });

    let token = |key: &str| -> Result<Json, GgufError> {
        Ok(match m.opt_usize(&format!("tokenizer.ggml.{key}"))? {
            Some(id) => json!(tokens.get(id).ok_or_else(|| GgufError::Tokenizer(format!(
                "tokenizer.ggml.{key} {id} is outside the vocabulary of {}",
                tokens.len()
            )))?),
            None => Json::Null,
        })
    };
    let flag = |key: &str| m.0.get(&format!("tokenizer.ggml.{key}")).map(|v| matches!(v, Value::Bool(true))).unwrap_or(false);
    let config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id")?,
        "eos_token": token("eos_token_id")?,
        "unk_token": token("unknown_token_id")?,
        "pad_token": token("padding_token_id")?,
        "add_bos_token": flag("add_bos_token"),
        "add_eos_token": flag("add_eos_token"),
        "chat_template": m.opt_str("tokenizer.chat_template")?,
        "model_max_length": context,
        "clean_up_tokenization_spaces": false,
    });
    Ok((tokenizer, config))
}
