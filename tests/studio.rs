//! The web app's engine (`studio::Studio`) on the llama-tiny fixture, natively and in headless
//! Chromium: text split, adapter sizes, a short training run, export and re-import of the adapter
//! (PEFT files and zip), generation with the adapter against a CPU-merged model, the merged-model
//! download against the run's own validation loss, resuming, and the error sentences; a GGUF base
//! kept compact (as stored or converted at load), its adapter and merged download.

mod common;
use common::gpu;

use loratab::generate::Sampling;
use loratab::lora::{self, LoraOptions, Target};
use loratab::model::{GpuModel, Model, ModelFiles, WeightFormat};
use loratab::studio::{model_files, Ask, ModelSource, SavedAdapter, Studio, StudioError};
use loratab::train::TrainSettings;
use loratab::zip;

const TEXT: &str = include_str!("fixtures/eval.txt");
const CONFIG: &str = include_str!("fixtures/llama-tiny/config.json");
const WEIGHTS: &[u8] = include_bytes!("fixtures/llama-tiny/model.safetensors");
const TOKENIZER: &[u8] = include_bytes!("fixtures/llama-tiny/tokenizer.json");
const TINY_GGUF: &[u8] = include_bytes!("fixtures/gguf/tiny.gguf");

fn files() -> ModelFiles {
    ModelFiles {
        config: CONFIG.to_string(),
        weights: vec![("model.safetensors".into(), WEIGHTS.to_vec())],
        tokenizer: TOKENIZER.to_vec(),
        generation_config: None,
        tokenizer_config: None,
    }
}

fn opts(rank: usize) -> LoraOptions {
    LoraOptions { rank, alpha: 2.0 * rank as f32, targets: vec![Target::Q, Target::V], ..LoraOptions::default() }
}

fn settings(steps: usize) -> TrainSettings {
    TrainSettings { steps, lr: 1e-2, batch: 2, seq_len: 16, log_every: 1, ..TrainSettings::default() }
}

const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: 0, seed: 0 };

gpu_test! {
    async fn zip_crc_and_round_trip() {
        // The standard CRC-32 check value.
        assert_eq!(zip::crc32(b"123456789"), 0xCBF4_3926);
        let archive = zip::store(&[("a.txt", b"hello".as_slice()), ("dir/b.bin", &[0u8, 1, 2, 255][..])]).unwrap();
        let back = zip::read(&archive).unwrap();
        assert_eq!(back, vec![("a.txt".to_string(), b"hello".to_vec()), ("dir/b.bin".to_string(), vec![0, 1, 2, 255])]);
        let mut damaged = archive.clone();
        damaged[36] ^= 1; // a byte of "hello" (after the 30-byte header and the name)
        assert!(matches!(zip::read(&damaged), Err(zip::ZipError::Corrupt(_))));
    }
}

gpu_test! {
    async fn model_info_split_and_adapter_size() {
        let studio = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        // Parameters: every element of every tensor in the file.
        let st = safetensors::SafeTensors::deserialize(WEIGHTS).unwrap();
        let elements: usize = st.tensors().iter().map(|(_, v)| v.shape().iter().product::<usize>()).sum();
        assert_eq!(studio.info.params, elements);
        assert_eq!(studio.info.architecture, "LlamaForCausalLM");

        let n = studio.tokenize(TEXT).unwrap().len();
        let s = studio.text_stats(TEXT, 16).unwrap();
        let windows = n / 16;
        assert_eq!((s.tokens, s.train_windows + s.validation_windows), (n, windows));
        assert_eq!(s.validation_windows, ((windows as f64 / 10.0).round() as usize).max(1));
        assert_eq!(s.validation_tokens, n - s.train_windows * 16);

        // q: 48 → 48, v: 48 → 16 (2 kv heads of 8), 2 layers: 2 · r · ((48 + 48) + (48 + 16)).
        let size = studio.adapter_size(&opts(4)).unwrap();
        assert_eq!(size.params, 2 * 4 * (96 + 64));
        assert!(size.bytes > 4 * size.params && size.bytes < 4 * size.params + 4096, "{size:?}");
        assert!((size.fraction - size.params as f64 / elements as f64).abs() < 1e-12);
        let bigger = studio.adapter_size(&opts(8)).unwrap();
        assert_eq!(bigger.params, 2 * size.params);
        let mem = studio.memory(&opts(4), &settings(1)).unwrap();
        assert_eq!(mem.optimizer, 8 * size.params as u64);
        assert_eq!(mem.weights, 4 * elements as u64);

        // The settings panel's memory hint: none when the run fits; over the limit, gradient
        // checkpointing while it is off (it needs less), else a smaller batch or sequence.
        let (o, s) = (opts(4), settings(1));
        let ckpt = TrainSettings { grad_checkpoint: true, ..s.clone() };
        let (need, less) = (mem.total(), studio.memory(&o, &ckpt).unwrap().total());
        assert!(less < need, "checkpointing needs {less} bytes, without {need}");
        assert_eq!(studio.memory_hint(&o, &s, need), None);
        let hint = studio.memory_hint(&o, &s, need - 1).unwrap();
        assert!(hint.contains("gradient checkpointing would need") && hint.contains(&loratab::train::memory::human(less)), "{hint}");
        let hint = studio.memory_hint(&o, &ckpt, less - 1).unwrap();
        assert!(hint.contains("lower the batch"), "{hint}");
        assert_eq!(studio.memory_hint(&o, &ckpt, less), None);

        // Over `max_memory` the run is refused before anything is allocated, with the estimate,
        // the limit and what to lower; at the limit exactly it starts.
        let before = studio.gpu_bytes();
        let over = TrainSettings { max_memory: Some(need - 1), ..settings(2) };
        let err = studio.start(TEXT, &o, over.clone()).await.err().unwrap();
        assert_eq!(studio.gpu_bytes(), before, "a refused run allocated GPU memory");
        assert!(matches!(err, StudioError::OverMemory { limit, .. } if limit == need - 1), "{err}");
        let human = loratab::train::memory::human;
        let text = err.to_string();
        for part in [human(need), human(need - 1), "lower the batch, the sequence length or the rank".into(), format!("gradient checkpointing (it would need {})", human(less))] {
            assert!(text.contains(&part), "`{part}` missing from: {text}");
        }
        let saved = SavedAdapter { adapter: lora::Adapter::from_options(studio.config(), &o).unwrap(), state: None, data: None };
        assert!(matches!(studio.load_adapter(TEXT, &saved, over).await, Err(StudioError::OverMemory { .. })));
        assert_eq!(studio.gpu_bytes(), before);
        let run = studio.start(TEXT, &o, TrainSettings { max_memory: Some(need), ..settings(2) }).await.unwrap();
        assert_eq!(studio.gpu_bytes() - before, need - mem.weights, "the run allocates its estimate");
        drop(run);
    }
}

gpu_test! {
    async fn train_export_compare_merge_resume() {
        let studio = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        let mut run = studio.start(TEXT, &opts(4), TrainSettings { lr: 3e-2, batch: 4, ..settings(6) }).await.unwrap();
        let before = studio.validation_loss(&run).await.unwrap();
        let base_text = studio.generate("the ", 8, &GREEDY, None).await.unwrap();
        let mut losses = Vec::new();
        while !run.finished() {
            losses.extend(studio.step(&mut run).await.unwrap().loss);
        }
        assert_eq!(losses.len(), 6);
        let after = studio.validation_loss(&run).await.unwrap();
        // Each logged loss is one batch's, so it is noisy; the held-out loss is the same text each time.
        assert!(after < before, "validation loss {before} → {after}");
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");

        // The zip holds PEFT's two files and the state; reading it back gives the same adapter.
        let saved = studio.snapshot(&run).await.unwrap();
        let archive = saved.zip().unwrap();
        let names: Vec<String> = zip::read(&archive).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors", "training_state.safetensors", "training_data.json"]);
        let back = SavedAdapter::from_files(vec![("adapter.zip".into(), archive)]).unwrap();
        assert_eq!(back.step(), 6);
        for (name, pair) in &saved.adapter.modules {
            assert_eq!(back.adapter.modules[name].b.data, pair.b.data, "{name}");
        }
        assert_eq!(back.adapter.config.r, 4);
        assert_eq!(back.data, Some(loratab::train::DataRecord::text(16)));
        // A folder an older CLI wrote names its record sft_config.json, with the old field names.
        let (config, weights) = saved.peft_files().unwrap();
        let old = r#"{"format": "text", "template": "plain", "chat_template": "x", "bos_token": null, "eos_token": null, "mask_prompt": false, "seq_len": 16}"#;
        let folder = vec![("a/adapter_config.json".into(), config.into_bytes()), ("a/adapter_model.safetensors".into(), weights), ("a/sft_config.json".into(), old.into())];
        let data = SavedAdapter::from_files(folder).unwrap().data.unwrap();
        assert_eq!((data.data.as_str(), data.max_length, data.completion_only_loss), ("examples", 16, Some(false)));

        // Generation with the adapter equals generation by the CPU-merged model; the base is restored.
        let tuned = studio.generate("the ", 8, &GREEDY, Some(&run)).await.unwrap();
        let (mut merged, tok) = Model::from_files(&files()).unwrap();
        lora::merge(&mut merged, &saved.adapter).unwrap();
        let merged_gpu = GpuModel::upload(&studio.ctx, &merged).await.unwrap();
        let ids = loratab::generate::generate(&studio.ctx, &merged_gpu, &tok.encode("the ").unwrap(), 8, &GREEDY, None).await.unwrap();
        assert_eq!(tuned, tok.decode(&ids).unwrap());
        assert_eq!(studio.generate("the ", 8, &GREEDY, None).await.unwrap(), base_text);
        // Another Compare (base, then adapter, the same prompt) reuses generation's buffers: it
        // allocates nothing on the GPU and gives the same texts.
        let memory = studio.ctx.memory();
        memory.reset_peak();
        let (tensors, bytes) = (memory.tensors(), memory.live());
        assert_eq!(studio.generate("the ", 8, &GREEDY, None).await.unwrap(), base_text);
        assert_eq!(studio.generate("the ", 8, &GREEDY, Some(&run)).await.unwrap(), tuned);
        assert_eq!((memory.tensors(), memory.peak()), (tensors, bytes), "a second Compare allocated GPU tensors");
        // Studio::compare generates the base answer once for the same prompt tokens, length and
        // sampling (the frozen weights cannot change it) and the adapter's every time; whatever
        // changes the base answer generates it again, as `generate` and `answer` give it.
        let ask = Ask::Text("the ".into());
        let first = studio.compare(&ask, 8, &GREEDY, Some(&run)).await.unwrap();
        assert_eq!((first.base.as_str(), first.tuned.as_deref(), first.base_reused), (base_text.as_str(), Some(tuned.as_str()), false));
        let again = studio.compare(&ask, 8, &GREEDY, Some(&run)).await.unwrap();
        assert_eq!((again.base.as_str(), again.tuned.as_deref(), again.base_reused), (base_text.as_str(), Some(tuned.as_str()), true));
        let sampled = Sampling { temperature: 0.8, top_k: 40, seed: 1 };
        let chat = vec![loratab::train::Message::new(loratab::train::Role::User, "the ")];
        for (ask, n, sampling) in [(Ask::Text("the ".into()), 7, GREEDY), (Ask::Text("the ".into()), 8, sampled), (Ask::Text("the".into()), 8, sampled), (Ask::Chat(chat.clone()), 8, sampled)] {
            let got = studio.compare(&ask, n, &sampling, None).await.unwrap();
            let fresh = match &ask {
                Ask::Text(p) => studio.generate(p, n, &sampling, None).await.unwrap(),
                Ask::Chat(c) => studio.answer(c, n, &sampling, None).await.unwrap(),
            };
            assert_eq!((got.base, got.tuned, got.base_reused), (fresh, None, false), "{ask:?} {n} {sampling:?}");
        }
        assert!(studio.compare(&Ask::Chat(chat), 8, &sampled, None).await.unwrap().base_reused);

        // The merged-model download scores the held-out text as the run does.
        let merged_files = model_files(vec![("merged.zip".into(), studio.merged_model_zip(&saved.adapter).unwrap())]).unwrap();
        let reloaded = Studio::load(gpu().await, merged_files, "merged").await.unwrap();
        let val = loratab::eval::eval(&reloaded.ctx, &reloaded.model, run.data().validation_tokens(), 16).await.unwrap();
        assert!((val.loss - after).abs() < 1e-4, "merged {} vs adapter {after}", val.loss);

        // Resuming from the download continues at step 6.
        assert!(matches!(studio.resume(TEXT, &back, settings(6)).await, Err(StudioError::AlreadyTrained { done: 6 })));
        let mut more = studio.resume(TEXT, &back, settings(8)).await.unwrap();
        assert_eq!(more.steps_done(), 6);
        while !more.finished() {
            studio.step(&mut more).await.unwrap();
        }
        assert_eq!(more.steps_done(), 8);
    }
}

gpu_test! {
    /// Examples through the studio: rendered with the plain template ending answers with the
    /// model's EOS (llama-tiny has no chat template; config.json's eos_token_id 0 is
    /// `<|endoftext|>`), counted as the library's dataset counts them, split by example with the
    /// held-out ones kept as written for Compare, trained, and answered with the answer cut at EOS.
    async fn examples_train_split_by_example_and_answer() {
        use loratab::studio::{ExampleSet, HeldOut, TrainData};
        use loratab::train::{ChatTemplate, Dataset, Example, Record};
        let studio = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        assert!(!studio.has_own_template());
        let pair = |p: String, c: String| Record::Completion { prompt: p, completion: c };
        let mut records: Vec<(String, Record)> = (0..12).map(|i| (format!("row {}", i + 1), pair(format!("{i} plus one?"), format!("It is {}.", i + 1)))).collect();
        // One answer too long for 32 tokens (cut), one prompt so long that no answer is left (left out).
        records.push(("row 13".into(), pair("Count.".into(), "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".into())));
        records.push(("row 14".into(), pair("a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h".into(), "Yes.".into())));
        let set = ExampleSet { records: records.clone(), answers_only: true };

        // The oracle: the library's template, examples and dataset, outside the studio.
        let tok = loratab::model::Tokenizer::from_bytes(TOKENIZER).unwrap();
        let plain = ChatTemplate::plain(Some("<|endoftext|>".into()));
        let examples: Vec<Example> = records.iter().map(|(_, r)| plain.example(&tok, r).unwrap()).collect();
        let want = Dataset::from_examples(examples, 32).unwrap();
        let ex = want.examples.as_ref().unwrap();
        assert!(ex.truncated >= 1 && ex.dropped == 1, "the test's long rows: {} cut, {} left out", ex.truncated, ex.dropped);
        let stats = studio.example_stats(&set, 32).unwrap();
        let all = || ex.train.iter().chain(&ex.validation);
        assert_eq!((stats.examples, stats.train, stats.validation), (13, ex.train.len(), ex.validation.len()));
        assert_eq!((stats.truncated, stats.dropped), (ex.truncated, ex.dropped));
        assert_eq!(stats.tokens, all().map(|e| e.ids.len()).sum::<usize>());
        assert_eq!(stats.learnt, all().map(Example::targets).sum::<usize>());
        assert!(stats.failed.is_empty());
        // Loss on every token: every position but each example's first is learnt, and nothing is left out.
        let every = studio.example_stats(&ExampleSet { answers_only: false, ..set.clone() }, 32).unwrap();
        assert_eq!((every.examples, every.dropped), (14, 0));
        assert_eq!(every.learnt, every.tokens - every.examples);

        // Trained by example: the held-out ones are the records at the dataset's held-out indices.
        let held: Vec<HeldOut> = ex.validation_from.iter().map(|&i| HeldOut::of(&records[i].1).unwrap()).collect();
        assert_eq!(held.len(), 1);
        let mut run = studio.start_on(&TrainData::Examples(set), &opts(2), TrainSettings { seq_len: 32, ..settings(2) }).await.unwrap();
        assert_eq!(run.held_out(), held.as_slice());
        let before = studio.validation_loss(&run).await.unwrap();
        while !run.finished() {
            studio.step(&mut run).await.unwrap();
        }
        let after = studio.validation_loss(&run).await.unwrap();
        assert!(before.is_finite() && after.is_finite() && after != before, "{before} → {after}");

        // A held-out question is asked as the template's user turn; the answer is the generation
        // from there, cut where the template ends an answer.
        let (q, context) = (held[0].question().to_string(), held[0].context.clone());
        assert!(records.iter().any(|(_, r)| matches!(r, Record::Completion { prompt, .. } if *prompt == q)));
        let prompt = studio.chat_prompt(&context).unwrap();
        assert_eq!(prompt, format!("Question: {q}\nAnswer:"));
        let raw = studio.generate(&prompt, 12, &GREEDY, Some(&run)).await.unwrap();
        let answer = studio.answer(&context, 12, &GREEDY, Some(&run)).await.unwrap();
        assert_eq!(answer, raw);

        // The adapter records its data: the plain template with its EOS, and the masking.
        let saved = studio.snapshot(&run).await.unwrap();
        let back = SavedAdapter::from_files(vec![("a.zip".into(), saved.zip().unwrap())]).unwrap();
        let data = back.data.expect("training_data.json in the zip");
        assert_eq!((data.data.as_str(), data.format.as_deref(), data.max_length, data.completion_only_loss), ("examples", Some("prompt_completion"), 32, Some(true)));
        assert_eq!((data.template.as_deref(), data.eos_token.as_deref()), (Some("plain"), Some("<|endoftext|>")));
        assert_eq!(data.chat_template.as_deref(), Some(loratab::train::PLAIN_TEMPLATE));

        // Too few examples: the page's sentence.
        let one = ExampleSet { records: records[..1].to_vec(), answers_only: true };
        let err = studio.example_stats(&one, 32).unwrap_err().to_string();
        assert!(err.starts_with("only 1 example can be trained on: training needs at least two"), "{err}");
    }
}

gpu_test! {
    async fn errors_are_sentences() {
        let studio = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        let short = studio.text_stats("a few words", 16).unwrap_err();
        assert!(matches!(short, StudioError::TextTooShort { .. }));
        assert!(short.to_string().contains("paste more text or lower the sequence length"), "{short}");
        let err = studio.start(TEXT, &LoraOptions { rank: 0, ..opts(4) }, settings(2)).await.err().unwrap();
        assert_eq!(err.to_string(), "the LoRA rank must be at least 1");
        let err = studio.start(TEXT, &opts(4), TrainSettings { seq_len: 1000, ..settings(2) }).await.err().unwrap();
        assert!(err.to_string().contains("context of 64 tokens"), "{err}");
        let err = model_files(vec![("config.json".into(), CONFIG.as_bytes().to_vec())]).err().unwrap();
        assert!(err.to_string().starts_with("tokenizer.json is missing"), "{err}");
        let err = SavedAdapter::from_files(vec![("notes.txt".into(), b"hi".to_vec())]).err().unwrap();
        assert!(err.to_string().contains("adapter_config.json and adapter_model.safetensors"), "{err}");
        // llama-tiny's rows of 48 are not whole blocks of 32: the page's sentence names its select.
        let err = Studio::load_as(gpu().await, files().into(), "llama-tiny", Some(WeightFormat::Q4_0)).await.err().unwrap();
        assert!(matches!(err, StudioError::Format { format: WeightFormat::Q4_0, .. }), "{err:?}");
        assert!(err.to_string().ends_with("not a multiple of q4_0's block of 32; choose “as stored”, f16 or f32 under Frozen weights"), "{err}");
    }
}

gpu_test! {
    /// A lost device (destroyed here, as a driver reset would) ends the run with a sentence, while
    /// the snapshot on the host still downloads and continues training on a new device.
    async fn a_lost_device_keeps_the_snapshot() {
        let studio = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        let mut run = studio.start(TEXT, &opts(4), settings(6)).await.unwrap();
        for _ in 0..3 {
            studio.step(&mut run).await.unwrap();
        }
        let saved = studio.snapshot(&run).await.unwrap();
        studio.ctx.device.destroy();
        let err = studio.step(&mut run).await.err().expect("a step on a destroyed device fails");
        assert!(err.is_device_lost(), "{err:?}");
        assert!(err.to_string().contains("reload"), "{err}");
        assert!(studio.snapshot(&run).await.is_err(), "nothing more comes back from a lost device");

        // The host copy is whole: its zip reads back as PEFT's files, and a new device resumes it at step 3.
        let back = SavedAdapter::from_files(vec![("adapter.zip".into(), saved.zip().unwrap())]).unwrap();
        assert_eq!(back.step(), 3);
        for (name, pair) in &saved.adapter.modules {
            assert_eq!(back.adapter.modules[name].a.data, pair.a.data, "{name}");
            assert_eq!(back.adapter.modules[name].b.data, pair.b.data, "{name}");
        }
        let fresh = Studio::load(gpu().await, files(), "llama-tiny").await.unwrap();
        let mut more = fresh.resume(TEXT, &back, settings(6)).await.unwrap();
        assert_eq!(more.steps_done(), 3);
        while !more.finished() {
            assert!(fresh.step(&mut more).await.unwrap().loss.unwrap().is_finite());
        }
    }
}

gpu_test! {
    /// An output layer over the buffer limit is split by the trainer, so the page loads the model;
    /// a block weight over it cannot be trained and is refused with a sentence.
    async fn buffer_limits_split_the_head_and_refuse_big_layers() {
        // llama-tiny: head 300 × 48 × 4 = 57 600 bytes; its largest block weight 48 × 144 × 4 = 27 648;
        // logits of 2 windows of 16 tokens 38 400.
        let ctx = gpu().await;
        ctx.set_max_binding(40_000);
        let studio = Studio::load(ctx, files(), "llama-tiny").await.unwrap();
        assert!(studio.model.lm_head.as_ref().unwrap().weight.parts.len() > 1, "the head is split");
        let mut run = studio.start(TEXT, &opts(4), settings(2)).await.unwrap();
        while !run.finished() {
            assert!(studio.step(&mut run).await.unwrap().loss.unwrap().is_finite());
        }
        let ctx = gpu().await;
        ctx.set_max_binding(20_000);
        let err = Studio::load(ctx, files(), "llama-tiny").await.err().unwrap();
        assert!(err.to_string().contains("one layer of this model"), "{err}");
    }
}

gpu_test! {
    /// A GGUF base stays in its stored formats on the GPU (or the one chosen at load); the bytes
    /// measured at upload are the packed tensors', the adapter names the file, and the merged
    /// download is the f32 folder that merging on the CPU into `import-gguf`'s output gives.
    async fn a_gguf_base_stays_compact() {
        let gguf = || ModelSource::Gguf { file_name: "tiny.gguf".into(), bytes: TINY_GGUF.into() };
        let imported = loratab::gguf::import(TINY_GGUF).unwrap();
        // Matrices keep their format; norms (1-D) are f32 on the GPU.
        let expect = |convert: Option<WeightFormat>| {
            let mut formats = std::collections::BTreeMap::new();
            let mut bytes = 0;
            for (_, w) in &imported.tensors {
                if w.shape.len() == 1 {
                    bytes += 4 * w.len() as u64;
                } else {
                    let f = convert.unwrap_or(w.format);
                    *formats.entry(f).or_insert(0) += 1;
                    bytes += f.bytes(w.len());
                }
            }
            (formats.into_iter().collect::<Vec<_>>(), bytes)
        };
        let studio = Studio::load(gpu().await, gguf(), "tiny.gguf").await.unwrap();
        assert!(studio.info.formats.len() > 2, "tiny.gguf mixes formats: {:?}", studio.info.formats);
        assert_eq!((studio.info.formats.clone(), studio.info.weight_bytes), expect(None));
        assert!(studio.info.source.contains("tiny.gguf"), "{}", studio.info.source);
        let q8 = Studio::load_as(gpu().await, gguf(), "tiny.gguf", Some(WeightFormat::Q8_0)).await.unwrap();
        assert_eq!((q8.info.formats.clone(), q8.info.weight_bytes), expect(Some(WeightFormat::Q8_0)));
        assert_eq!(q8.frozen(), Some(WeightFormat::Q8_0));
        drop(q8);

        let mut run = studio.start(TEXT, &opts(2), TrainSettings { lr: 3e-2, ..settings(2) }).await.unwrap();
        while !run.finished() {
            assert!(studio.step(&mut run).await.unwrap().loss.unwrap().is_finite());
        }
        let saved = studio.snapshot(&run).await.unwrap();
        assert_eq!(saved.adapter.config.base_model_name_or_path.as_deref(), Some("tiny.gguf"));
        let merged = zip::read(&studio.merged_model_zip(&saved.adapter).unwrap()).unwrap();
        let names: Vec<&str> = merged.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"]);
        let (got, got_tok) = Model::from_files(&model_files(merged).unwrap()).unwrap();
        let (mut want, _) = Model::from_files(&common::gguf_model_files(TINY_GGUF, false)).unwrap();
        lora::merge(&mut want, &saved.adapter).unwrap();
        assert_eq!(got.to_tensors(), want.to_tensors(), "the merged download");
        // It keeps the GGUF's stop ids (its EOS, <|im_end|>) and chat template, which the
        // page's Compare asks its questions through.
        let template = studio.chat_template().unwrap();
        assert!(!template.is_plain());
        assert_eq!(studio.config().stop_ids, [studio.tokenizer.token_to_id("<|im_end|>").unwrap()]);
        assert_eq!(got.config.stop_ids, studio.config().stop_ids);
        assert_eq!(loratab::train::ChatTemplate::for_model(&got_tok, &got.config).unwrap().source, template.source);
        let asked = studio.generate_chat("hi", 4, &GREEDY, Some(&run)).await.unwrap();
        assert_eq!(asked, studio.generate("<|im_start|>hi<|im_end|>", 4, &GREEDY, Some(&run)).await.unwrap());

        // A download cut short is the reader's sentence, before any GPU work.
        let cut = ModelSource::Gguf { file_name: "cut.gguf".into(), bytes: TINY_GGUF[..TINY_GGUF.len() / 2].into() };
        let err = Studio::load(gpu().await, cut, "cut.gguf").await.err().unwrap();
        assert!(matches!(err, StudioError::Gguf(_)), "{err:?}");
        assert!(err.to_string().contains("truncated") || err.to_string().contains("outside"), "{err}");
    }
}
