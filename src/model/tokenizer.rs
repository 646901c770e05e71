//! tokenizer.json through the `tokenizers` crate (the same code natively and in wasm).

use super::ModelError;

/// Token ids and each token's byte range in the text.
pub type IdsAndOffsets = (Vec<u32>, Vec<(usize, usize)>);

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer without its post-processor, made on first use by
    /// [`Tokenizer::encode_with_offsets`]: with no special tokens added a post-processor changes no
    /// id, but ByteLevel's `trim_offsets` would move offsets off the whitespace tokens start with.
    untrimmed: std::sync::OnceLock<tokenizers::Tokenizer>,
}

impl Tokenizer {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ModelError> {
        // JSON syntax first: `tokenizers` panics (an `expect` in its decoder's deserializer) on some
        // files that are not valid JSON, instead of returning its error (tests/fixtures/fuzz/tokenizer-*).
        serde_json::from_slice::<serde_json::Value>(bytes).map_err(|e| ModelError::Tokenizer(format!("it is not valid JSON ({e})")))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, untrimmed: std::sync::OnceLock::new() })
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
