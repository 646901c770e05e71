//! Continue elsewhere: a run written out for PyTorch, where TRL's `SFTTrainer` + PEFT (and
//! accelerate/DeepSpeed behind them) carry it on. No file system here: [`trl_export`] returns the
//! files' names and bytes, and the CLI writes them to a folder, the page zips them.
//!
//! The files:
//! - `train.jsonl`, `validation.jsonl`: the examples loratab trains and validates on (the same
//!   split, [`Dataset::from_examples`]), one record per line in a form TRL reads:
//!   `{"text"}`, conversational `{"prompt": [user], "completion": [assistant]}`, or `{"messages"}`;
//! - `order.json`: the training example (a line of train.jsonl, from 0) of every window loratab's
//!   sampler draws over the whole run, batch after batch (steps × grad_accum × batch of them);
//! - `adapter/`: the adapter the run starts from (PEFT's two files: a fresh one with loratab's
//!   seeded init, or the one given);
//! - `training_data.json`: the [`DataRecord`] an adapter trained in loratab on these examples
//!   carries (kind, template and its tokens, masking, max_length), the same file by the same name;
//! - `train_trl.py`: settings (base model, chat template and its tokens, masking, r, α, targets,
//!   dropout, schedule, batch, seq_len, seed) then `trl_export.py`'s body.
//!
//! What TRL cannot say the same way, and what the script does instead:
//! - answer-only loss: TRL's `completion_only_loss` masks a prompt/completion pair's prompt by
//!   token count, and `assistant_only_loss` needs `{% generation %}` markers in the template (which
//!   SmolLM2's, Qwen2's and the plain template lack). The script therefore tokenizes each record the
//!   way [`ChatTemplate::example`] does (the template rendered once, assistant spans by rendering the
//!   prefixes, a token learnt if its characters overlap a span) and gives SFTTrainer
//!   `input_ids` + `labels`, which it uses as they are;
//! - the batches: `train_sampling_strategy="sequential"` over the examples in `order.json`'s order;
//! - the schedule: loratab's warmup reaches the peak at the last warmup step (transformers' starts
//!   at 0), so the script passes its own `LambdaLR` of [`super::Schedule::lr`];
//! - accumulation: each micro-batch's mean loss weighs equally (`model_accepts_loss_kwargs = False`),
//!   as in loratab, rather than transformers' token-weighted mean;
//! - dropout: PEFT's `lora_dropout` with torch's random masks (loratab hashes its own), so a run with
//!   dropout matches in distribution, not bit for bit; the base model's own dropouts are set to 0,
//!   as loratab never drops in the frozen network.
//!
//! The script starts a fresh AdamW at step 1 of the schedule from the adapter in `adapter/`; a run
//! exported before training (the CLI's `export-trl`) therefore prints, as its first loss, the loss
//! loratab's first step reports (tools/check_trl_export.py checks it to 1e-4).

use serde_json::{json, Value};

use super::chat::{ChatTemplate, DataRecord, DATA_FILE};
use super::data::Dataset;
use super::examples::Record;
use super::{Decay, TrainError, TrainSettings};
use crate::lora::{module_sites, Adapter, LoraError, Site};
use crate::model::{Config, Tokenizer};

/// The script, whose `# <settings>` line becomes the run's settings.
const SCRIPT_BODY: &str = include_str!("trl_export.py");

/// What a TRL export is made from.
pub struct TrlRun<'a> {
    /// The file's good records with their line numbers (as [`super::Parsed::records`]).
    pub records: &'a [(usize, Record)],
    pub template: &'a ChatTemplate,
    /// Loss on the answers only (false: on every token of every example).
    pub answers_only: bool,
    /// The adapter the run starts from (its config gives r, α, targets, dropout, rsLoRA, patterns).
    pub adapter: &'a Adapter,
    pub settings: &'a TrainSettings,
    /// The base model as the script loads it: a folder, a `.gguf` file or a Hub id.
    pub base_model: &'a str,
    /// B rows kept at zero ([`frozen_rows`]): the script zeroes their gradient.
    pub frozen_rows: &'a [FrozenRows],
}

/// Rows `start..end` of a module's B that training leaves at zero (GPT-2's c_attn when only some of
/// q, k, v are targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrozenRows {
    pub module: String,
    pub start: usize,
    pub end: usize,
}

/// The B rows of `adapter`'s modules that belong to `frozen` sites, on a model with `config`.
pub fn frozen_rows(config: &Config, adapter: &Adapter, frozen: &[Site]) -> Vec<FrozenRows> {
    let mut out = Vec::new();
    for module in adapter.modules.keys() {
        let Some((_, sites)) = module_sites(config.arch, module) else { continue };
        let mut row = 0;
        for site in sites {
            let rows = site.out_dim(config);
            if frozen.contains(&site) {
                out.push(FrozenRows { module: module.clone(), start: row, end: row + rows });
            }
            row += rows;
        }
    }
    out
}

/// What can stop an export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Lora(#[from] LoraError),
}

/// One file of an export: its path inside the export folder and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl ExportFile {
    fn new(name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        Self { name: name.to_string(), bytes: bytes.into() }
    }
}

/// The name of the export's script.
pub const TRL_SCRIPT: &str = "train_trl.py";

/// A record as one line TRL reads (prompt/completion pairs in TRL's conversational form, so the
/// chat template applies to them as it does in loratab).
pub fn trl_record(record: &Record) -> Value {
    match record {
        Record::Text(text) => json!({ "text": text }),
        Record::Completion { prompt, completion } => json!({
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": completion}],
        }),
        Record::Chat(messages) => json!({ "messages": messages }),
    }
}

fn jsonl<'r>(records: impl Iterator<Item = &'r Record>) -> String {
    records.map(|r| trl_record(r).to_string() + "\n").collect()
}

/// A Python literal: a string (JSON's escapes are Python's), None, or a number.
fn py_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn py_opt(s: Option<&str>) -> String {
    s.map_or("None".to_string(), py_str)
}

/// The run as TRL + PEFT files (see the module comment).
pub fn trl_export(tok: &Tokenizer, run: &TrlRun) -> Result<Vec<ExportFile>, ExportError> {
    let s = run.settings;
    // The examples exactly as loratab makes them, to split and drop the same ones; records the
    // template refuses are left out, as training leaves them out (the caller reports them).
    let (examples, failed) = run.template.examples(tok, run.records);
    let examples: Vec<_> = examples.into_iter().map(|e| if run.answers_only { e } else { e.unmasked() }).collect();
    let kept: Vec<&Record> = run.records.iter().filter(|(line, _)| !failed.iter().any(|(f, _)| f == line)).map(|(_, r)| r).collect();
    let data = Dataset::from_examples(examples, s.seq_len)?;
    let ex = data.examples.as_ref().expect("made from examples");
    let records = |which: &[usize]| jsonl(which.iter().map(|&i| kept[i]));
    let mut sampler = data.sampler(s.seed);
    let order: Vec<usize> = (0..s.steps * s.grad_accum * s.batch).map(|_| sampler.next_window()).collect();

    let (config, weights) = run.adapter.to_files()?;
    let c = &run.adapter.config;
    let decay = match s.decay {
        Decay::Cosine => "cosine",
        Decay::Linear => "linear",
        Decay::Constant => "constant",
    };
    let t = run.template;
    let settings = [
        format!("BASE_MODEL = {}  # a model folder, a .gguf file or a Hub id", py_str(run.base_model)),
        format!("CHAT_TEMPLATE = {}", py_str(&t.source)),
        format!("BOS_TOKEN = {}", py_opt(t.bos_token.as_deref())),
        format!("EOS_TOKEN = {}", py_opt(t.eos_token.as_deref())),
        format!("ANSWERS_ONLY = {}", if run.answers_only { "True" } else { "False" }),
        format!("# LoRA (adapter/adapter_config.json): r {}, alpha {}, targets {}, dropout {}{}", c.r, c.lora_alpha, c.target_modules.join(","), c.lora_dropout, if c.use_rslora { ", rsLoRA" } else { "" }),
        format!("STEPS = {}", s.steps),
        format!("LR = {}", s.lr),
        format!("WARMUP = {}", s.warmup),
        format!("DECAY = {}  # cosine, linear or constant, to 0 at the last step", py_str(decay)),
        format!("BATCH = {}", s.batch),
        format!("GRAD_ACCUM = {}", s.grad_accum),
        format!("SEQ_LEN = {}", s.seq_len),
        format!("MAX_GRAD_NORM = {}", s.max_grad_norm.map_or(0.0, |m| m)),
        format!("WEIGHT_DECAY = {}", s.weight_decay),
        format!("SEED = {}", s.seed),
        format!(
            "FROZEN_ROWS = {}  # (module, first row, end) of B that stays zero",
            serde_json::to_string(&run.frozen_rows.iter().map(|f| (&f.module, f.start, f.end)).collect::<Vec<_>>()).expect("serializes")
        ),
    ];
    let settings = format!("# The run's settings, as loratab trains it.\n{}\n", settings.join("\n"));
    let script = SCRIPT_BODY.replacen("# <settings>\n", &settings, 1);
    let record = DataRecord::examples(super::Kind::of(kept.iter().copied()), t, run.answers_only, s.seq_len);
    Ok(vec![
        ExportFile::new("train.jsonl", records(&ex.train_from)),
        ExportFile::new("validation.jsonl", records(&ex.validation_from)),
        ExportFile::new("order.json", serde_json::to_string(&order).expect("numbers serialize")),
        ExportFile::new("adapter/adapter_config.json", config),
        ExportFile::new("adapter/adapter_model.safetensors", weights),
        ExportFile::new(DATA_FILE, record.to_json()),
        ExportFile::new(TRL_SCRIPT, script),
    ])
}

/// What a line of train.jsonl or validation.jsonl holds, read back (the inverse of [`trl_record`]).
pub fn parse_trl_record(line: &str) -> Option<Record> {
    let v: Value = serde_json::from_str(line).ok()?;
    let content = |key: &str| -> Option<String> { Some(v.get(key)?.get(0)?.get("content")?.as_str()?.to_string()) };
    if let Some(t) = v.get("text") {
        return Some(Record::Text(t.as_str()?.to_string()));
    }
    if v.get("prompt").is_some() {
        return Some(Record::Completion { prompt: content("prompt")?, completion: content("completion")? });
    }
    let (_, r) = super::examples::parse(&json!({ "messages": v.get("messages")? }).to_string()).records.pop()?;
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::data::Example;
    use crate::train::examples::{parse, Message, Role};

    fn tokenizer() -> Tokenizer {
        Tokenizer::from_bytes(include_bytes!("../../tests/fixtures/chat/tokenizer.json")).unwrap()
    }

    fn adapter() -> Adapter {
        let config = crate::lora::LoraConfig::from_json(r#"{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "lora_dropout": 0.0}"#).unwrap();
        Adapter { config, modules: Default::default() }
    }

    fn file<'f>(files: &'f [ExportFile], name: &str) -> &'f str {
        std::str::from_utf8(&files.iter().find(|f| f.name == name).unwrap().bytes).unwrap()
    }

    /// The jsonl files hold exactly the examples loratab trains and validates on, split the same
    /// way; order.json is the sampler's draw; the script carries the run's settings.
    #[test]
    fn the_export_is_the_run() {
        let lines: Vec<String> = (0..23)
            .map(|i| json!({"prompt": format!("Question {i} ✓?"), "completion": format!("Answer {i}.")}).to_string())
            .collect();
        let parsed = parse(&lines.join("\n"));
        let template = ChatTemplate::plain(Some("<|endoftext|>".into()));
        let settings = TrainSettings { steps: 7, batch: 3, seq_len: 32, warmup: 2, seed: 5, ..TrainSettings::default() };
        let (tok, adapter) = (tokenizer(), adapter());
        let run = TrlRun { records: &parsed.records, template: &template, answers_only: true, adapter: &adapter, settings: &settings, base_model: "models/austen-5m", frozen_rows: &[] };
        let files = trl_export(&tok, &run).unwrap();

        let back = |name: &str| -> Vec<Record> { file(&files, name).lines().map(|l| parse_trl_record(l).unwrap()).collect() };
        let (train, validation) = (back("train.jsonl"), back("validation.jsonl"));
        let examples = template.examples(&tok, &parsed.records).0;
        let data = Dataset::from_examples(examples, 32).unwrap();
        let ex = data.examples.as_ref().unwrap();
        let made = |records: &[Record]| -> Vec<Example> { records.iter().map(|r| template.example(&tok, r).unwrap()).collect() };
        assert_eq!((train.len(), validation.len()), (21, 2));
        assert_eq!(made(&train), ex.train);
        assert_eq!(made(&validation), ex.validation);

        let order: Vec<usize> = serde_json::from_str(file(&files, "order.json")).unwrap();
        let mut sampler = data.sampler(5);
        assert_eq!(order.len(), 21);
        assert_eq!(order, (0..21).map(|_| sampler.next_window()).collect::<Vec<_>>());

        let script = file(&files, TRL_SCRIPT);
        for want in ["STEPS = 7\n", "BATCH = 3\n", "SEQ_LEN = 32\n", "WARMUP = 2\n", "SEED = 5\n", "ANSWERS_ONLY = True\n", "EOS_TOKEN = \"<|endoftext|>\"\n", "BOS_TOKEN = None\n", "from trl import"] {
            assert!(script.contains(want), "{want:?} missing from the script");
        }
        // The template as a Python string literal, read back.
        let literal = script.lines().find_map(|l| l.strip_prefix("CHAT_TEMPLATE = ")).unwrap();
        assert_eq!(serde_json::from_str::<String>(literal).unwrap(), template.source);
        // The record an adapter trained on these examples in loratab carries, by the same name.
        let record = DataRecord::from_json(DATA_FILE, file(&files, DATA_FILE).as_bytes()).unwrap();
        assert_eq!(record, DataRecord::examples(Some(crate::train::Kind::Completion), &template, true, 32));
        assert_eq!(Adapter::from_files(file(&files, "adapter/adapter_config.json"), &files.iter().find(|f| f.name.ends_with(".safetensors")).unwrap().bytes).unwrap().config, adapter.config);
    }

    /// Conversations and documents survive the round trip; a record the template refuses is left
    /// out, as training leaves it out.
    #[test]
    fn every_kind_round_trips_and_refused_records_are_left_out() {
        let chat = Record::Chat(vec![Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi \"there\""), Message::new(Role::Assistant, "Hello\nworld")]);
        for r in [chat, Record::Text("a document\n".into()), Record::Completion { prompt: String::new(), completion: "x".into() }] {
            assert_eq!(parse_trl_record(&trl_record(&r).to_string()), Some(r));
        }
        let refusing = ChatTemplate::new("{% for m in messages %}{% if m.content == 'no' %}{{ raise_exception('no') }}{% endif %}{{ m.content }} {% endfor %}", None, None).unwrap();
        let pair = |p: &str| Record::Completion { prompt: p.into(), completion: "b".into() };
        let records: Vec<(usize, Record)> = ["a", "no", "c"].iter().enumerate().map(|(i, p)| (i + 1, pair(p))).collect();
        let (tok, adapter, settings) = (tokenizer(), adapter(), TrainSettings { steps: 1, batch: 1, seq_len: 16, ..TrainSettings::default() });
        let run = TrlRun { records: &records, template: &refusing, answers_only: true, adapter: &adapter, settings: &settings, base_model: "m", frozen_rows: &[] };
        let files = trl_export(&tok, &run).unwrap();
        let all: Vec<Record> = ["train.jsonl", "validation.jsonl"].iter().flat_map(|n| file(&files, n).lines().map(|l| parse_trl_record(l).unwrap()).collect::<Vec<_>>()).collect();
        assert_eq!(all, [pair("a"), pair("c")]);
    }
}
