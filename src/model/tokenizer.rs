//! tokenizer.json through the `tokenizers` crate (the same code natively and in wasm).

use super::ModelError;

/// Tokens chat templates close a turn with (ChatML, Llama 3, Phi-3, Gemma, …): generation stops at
/// each that the model's template writes and its tokenizer knows, besides its EOS.
pub const END_OF_TURN: [&str; 6] = ["<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>"];

/// Token ids and each token's byte range in the text.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer without its post-processor, made on first use by
    /// [`Tokenizer::encode_with_offsets`]: with no special tokens added a post-processor changes no
    /// id, but ByteLevel's `trim_offsets` would move offsets off the whitespace tokens start with.
    untrimmed: std::sync::OnceLock<tokenizers::Tokenizer>,
    /// tokenizer_config.json (its `chat_template`, `bos_token`, `eos_token`), when the model has one.
    config: Option<serde_json::Value>,
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, untrimmed: std::sync::OnceLock::new(), config: None })
    }

    /// The same tokenizer with its tokenizer_config.json (where `train::ChatTemplate::for_model`
    /// finds the chat template).
    pub fn with_config(mut self, config: Option<serde_json::Value>) -> Self {
        self.config = config;
        self
    }

    /// tokenizer_config.json, when the model came with one.
    pub fn config(&self) -> Option<&serde_json::Value> {
        self.config.as_ref()
    }

    /// The text of token `id` (None outside the vocabulary).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The ids generation stops at: `eos` (generation_config.json's `eos_token_id`, else
    /// config.json's), tokenizer_config.json's `eos_token`, and each [`END_OF_TURN`] token the chat
    /// template writes, in that order, without repeats.
    pub fn stop_ids(&self, eos: &[u32]) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        let config = self.config.as_ref();
        let named = config.and_then(|c| match c.get("eos_token")? {
            serde_json::Value::String(s) => Some(s.as_str()),
            o => o.get("content")?.as_str(),
        });
        // The template as text: a string, or a list of named templates.
        let template = config.and_then(|c| c.get("chat_template")).map(|t| t.to_string()).unwrap_or_default();
        let turns = END_OF_TURN.into_iter().filter(|t| template.contains(t));
        for id in eos.iter().copied().chain(named.into_iter().chain(turns).filter_map(|t| self.token_to_id(t))) {
            if !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let enc = self.inner.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` (no special tokens added; added tokens such as `<|im_start|>` written in
    /// the text are recognised, as transformers' `apply_chat_template` tokenizes) with each token's
    /// byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<IdsAndOffsets, ModelError> {
        let plain = self.untrimmed.get_or_init(|| {
            let mut t = self.inner.clone();
            t.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
            t
        });
        let enc = plain.encode(text, false).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The id of a token written as `token` (an added token such as `<|im_end|>`, or a vocabulary entry).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner.decode(ids, false).map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The number of ids the tokenizer can produce (its vocabulary with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
