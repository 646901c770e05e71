//! `--model` and `--base-dtype` as every subcommand takes them: a Hugging Face model folder, a llama
//! `.gguf` file (its tensors kept in their stored formats, no f32 copy), or nothing (the embedded
//! austen-5m); `--base-dtype` keeps the frozen matrices in another format instead.

use std::path::{Path, PathBuf};

use loratab::gguf::{GgufError, Imported};
use loratab::model::{Model, ModelError, ModelFiles, Tokenizer, WeightFormat};

/// What opening `--model` can fail with, as one sentence.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {source}")]
    Gguf { path: String, source: GgufError },
}

/// The base model as the files hold it.
pub enum Source {
    Folder(ModelFiles),
    Gguf { path: PathBuf, imported: Box<Imported> },
}

/// A path names a GGUF file when it is a file (a folder is a model folder) or says `.gguf`, so a
/// missing `x.gguf` is reported as a missing file, not as a folder without config.json.
fn is_gguf(path: &Path) -> bool {
    path.is_file() || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl Source {
    /// Read `--model` (`None`: the embedded default model).
    pub fn open(path: Option<&Path>) -> Result<Self, OpenError> {
        let Some(path) = path else { return Ok(Source::Folder(loratab::model::default::files())) };
        if !is_gguf(path) {
            return Ok(Source::Folder(ModelFiles::read_dir(path)?));
        }
        let bytes = std::fs::read(path).map_err(|e| ModelError::Io { path: path.display().to_string(), reason: e.to_string() })?;
        let imported = loratab::gguf::import(&bytes).map_err(|source| gguf_error(path, source))?;
        Ok(Source::Gguf { path: path.to_path_buf(), imported: Box::new(imported) })
    }

    /// The model (weights in their stored formats, or in `base` when given) and its tokenizer.
    pub fn model(&self, base: Option<WeightFormat>) -> Result<(Model, Tokenizer), OpenError> {
        let (mut model, tokenizer) = match self {
            Source::Folder(files) => Model::from_files(files)?,
            Source::Gguf { path, imported } => imported.model().map_err(|source| gguf_error(path, source))?,
        };
        if let Some(format) = base {
            model.convert_weights(format)?;
        }
        Ok((model, tokenizer))
    }

    /// A model folder's files other than model.safetensors, for a merged model saved in f32:
    /// config.json (float32) and tokenizer.json, plus generation_config.json and
    /// tokenizer_config.json for a GGUF base (as `loratab import-gguf` writes them).
    pub fn folder_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, OpenError> {
        Ok(match self {
            Source::Folder(files) => vec![
                ("config.json", loratab::model::config_json_f32(&files.config)?.into_bytes()),
                ("tokenizer.json", files.tokenizer.clone()),
            ],
            Source::Gguf { imported, .. } => imported.folder_files(false),
        })
    }
}

fn gguf_error(path: &Path, source: GgufError) -> OpenError {
    OpenError::Gguf { path: path.display().to_string(), source }
}

/// PEFT's `base_model_name_or_path` for an adapter trained on `--model`: the folder as given, a
/// GGUF's file name (the adapter is for the dequantized model that file holds), or the default's path.
pub fn base_name(path: Option<&Path>) -> String {
    match path {
        Some(p) if is_gguf(p) => p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned()),
        Some(p) => p.display().to_string(),
        None => loratab::model::default::PATH.to_string(),
    }
}

/// clap's parser of `--base-dtype`: the sentence lists the formats.
pub fn parse_format(name: &str) -> Result<WeightFormat, String> {
    WeightFormat::parse(name).ok_or_else(|| {
        let names: Vec<&str> = WeightFormat::ALL.iter().map(|f| f.name()).collect();
        format!("`{name}` is not a weight format: choose one of {}", names.join(", "))
    })
}

/// The frozen matrices' formats, most common first: "q4_1 ×210, q8_0 ×1".
pub fn formats(model: &Model) -> String {
    let mut counts: Vec<(WeightFormat, usize)> = model.weight_formats().into_iter().collect();
    counts.sort_by_key(|&(f, n)| (std::cmp::Reverse(n), f));
    counts.iter().map(|(f, n)| format!("{f} ×{n}")).collect::<Vec<_>>().join(", ")
}
