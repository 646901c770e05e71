//! `loratab import-gguf` against transformers' own GGUF loader (tools/golden_gguf.py wrote
//! tests/fixtures/gguf/: a tiny llama GGUF with Q8_0, Q4_0, Q4_1, F16, BF16 and F32 tensors, the
//! tensors transformers dequantizes from it, token ids and a loss), dequantization against ggml's
//! formulas on hand-made blocks, and broken or unsupported files → sentences, never panics.

mod common;
use common::{gpu, write_gguf, GgufTensor};

use std::collections::BTreeMap;

use loratab::gguf::{dequantize, import, Gguf, GgufError, Kind, Value};
use loratab::model::{load_safetensors, GpuModel, HostTensor, Model, ModelFiles, Tokenizer, Weight, WeightFormat};

const TINY: &[u8] = include_bytes!("fixtures/gguf/tiny.gguf");
const GOLDEN: &[u8] = include_bytes!("fixtures/gguf/golden.safetensors");
const GOLDEN_JSON: &str = include_str!("fixtures/gguf/golden.json");
const EVAL_TEXT: &str = include_str!("fixtures/eval.txt");

fn golden() -> std::collections::HashMap<String, HostTensor> {
    load_safetensors("golden.safetensors", GOLDEN).unwrap()
}

fn golden_json() -> serde_json::Value {
    serde_json::from_str(GOLDEN_JSON).unwrap()
}

/// The imported folder's files, as `loratab eval --model` would read them.
fn imported_files(f16: bool) -> ModelFiles {
    common::gguf_model_files(TINY, f16)
}

#[test]
fn every_tensor_equals_transformers_dequantized_one() {
    let imported = import(TINY).unwrap();
    let golden = golden();
    let mut names = 0;
    for (name, t) in &imported.tensors {
        let want = &golden[name];
        assert_eq!(t.shape, want.shape, "{name}");
        // Kept in the file's format (repacked, not decoded); its decoding is transformers'.
        let worst = common::max_abs_diff(&t.to_f32().data, &want.data, name);
        assert!(worst <= 1e-6, "{name}: max |loratab − transformers| = {worst}");
        names += 1;
    }
    // Everything transformers has (all but the recorded ids and loss), nothing more.
    assert_eq!(names, golden.len() - 2);
    let kinds: Vec<_> = imported.kinds.keys().copied().collect();
    assert_eq!(kinds, ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]);
}

#[test]
fn config_matches_transformers() {
    let imported = import(TINY).unwrap();
    let want = &golden_json()["config"];
    for (key, value) in want.as_object().unwrap() {
        let got = &imported.config[key];
        match value.as_f64().filter(|_| value.is_f64()) {
            // transformers widens the stored f32 (9.999999747378752e-6); loratab writes its shortest form (1e-5).
            Some(x) => assert_eq!(got.as_f64().unwrap() as f32, x as f32, "{key}"),
            None => assert_eq!(got, value, "{key}"),
        }
    }
    // The written config is one loratab reads, and the weights fit it (shapes checked on load).
    let (model, _) = Model::from_files(&imported_files(false)).unwrap();
    assert_eq!(model.config.head_dim, 16);
    assert!(model.lm_head.is_some());
}

#[test]
fn tokenizer_ids_match_the_source_tokenizer() {
    let (_, tokenizer) = Model::from_files(&imported_files(false)).unwrap();
    let json = golden_json();
    for (text, ids) in [("sample", "tokens"), ("no_digits", "no_digits_tokens")] {
        let want: Vec<u32> = json[ids].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tokenizer.encode(json[text].as_str().unwrap()).unwrap();
        assert_eq!(got, want, "{text}");
        assert_eq!(tokenizer.decode(&got).unwrap(), json[text].as_str().unwrap());
    }
    let ids: Vec<u32> = golden()["tokens"].data.iter().map(|&x| x as u32).collect();
    assert_eq!(tokenizer.encode(json["sample"].as_str().unwrap()).unwrap(), ids);
}

#[test]
fn f16_weights_are_the_f32_ones_rounded() {
    let (a, _) = Model::from_files(&imported_files(false)).unwrap();
    let (b, _) = Model::from_files(&imported_files(true)).unwrap();
    // The f16 folder's weights stay f16 (as the GPU keeps them); their values are the f32 ones rounded.
    assert_eq!(b.token_embedding.format, loratab::model::WeightFormat::F16);
    let (a, b) = (a.token_embedding.to_f32().data, b.token_embedding.to_f32().data);
    let rounded: Vec<f32> = a.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_eq!(common::max_abs_diff(&rounded, &b, "token_embedding"), 0.0);
}

gpu_test! {
    /// eval.txt scores as transformers scores the GGUF, both with the GGUF loaded directly (its
    /// tensors kept Q8_0/Q4_0/Q4_1/F16/BF16 on the GPU) and through the imported f32 folder.
    async fn eval_loss_matches_transformers() {
        let ctx = gpu().await;
        let direct = import(TINY).unwrap().model().unwrap();
        assert_eq!(direct.0.token_embedding.format, WeightFormat::Q8_0);
        let folder = Model::from_files(&imported_files(false)).unwrap();
        for (what, (model, tokenizer)) in [("direct", direct), ("folder", folder)] {
            let gm = GpuModel::upload(&ctx, &model).await.unwrap();
            let tokens = tokenizer.encode(EVAL_TEXT).unwrap();
            let json = golden_json();
            assert_eq!(tokens.len() as u64, json["loss_tokens"].as_u64().unwrap());
            let r = loratab::eval::eval(&ctx, &gm, &tokens, model.config.max_positions).await.unwrap();
            let want = golden()["loss"].data[0] as f64;
            assert!((r.loss - want).abs() < 1e-4, "{what}: loss {} vs transformers {want}", r.loss);
        }
    }
}

/// The GPU layout a stored tensor is repacked into decodes (`Weight::to_f32`, the shaders' CPU
/// reference) to exactly what ggml's formulas make of the file's bytes, for every tensor and type
/// of the fixture.
#[test]
fn repacked_tensors_decode_as_ggml_does() {
    let g = Gguf::parse(TINY).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for t in &g.tensors {
        let format = WeightFormat::parse(t.kind.name).unwrap();
        let w = Weight::from_stored(format, &t.shape(), g.raw(t), &t.name).unwrap();
        assert_eq!((w.format, &w.shape), (format, &t.shape()), "{}", t.name);
        let want = dequantize(t.kind, g.raw(t)).unwrap();
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w.to_f32().data), bits(&want), "{} ({})", t.name, t.kind.name);
        kinds.insert(t.kind.name);
    }
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["BF16", "F16", "F32", "Q4_0", "Q4_1", "Q8_0"]);
}

// ---- dequantization: ggml's formulas on hand-made blocks ----

fn kind(name: &str) -> Kind {
    (0..64).filter_map(Kind::from_code).find(|k| k.name == name).unwrap()
}

fn f16_bytes(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

#[test]
fn q8_0_is_scale_times_signed_byte() {
    let mut block = f16_bytes(0.5).to_vec();
    block.extend((0..32).map(|i| (i * 7 - 100) as i8 as u8));
    let got = dequantize(kind("Q8_0"), &block).unwrap();
    let want: Vec<f32> = (0..32).map(|i| (i * 7 - 100) as f32 * 0.5).collect();
    assert_eq!(got, want);
    assert_eq!((got[0], got[31]), (-50.0, 58.5));
}

#[test]
fn q4_0_low_nibbles_first_then_high_minus_8() {
    // Byte j holds element j (low nibble) and element j + 16 (high nibble).
    let mut block = f16_bytes(0.25).to_vec();
    block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
    let got = dequantize(kind("Q4_0"), &block).unwrap();
    let want: Vec<f32> = (0..16).map(|j| (j - 8) as f32 * 0.25).chain((0..16).map(|j| (7 - j) as f32 * 0.25)).collect();
    assert_eq!(got, want);
    assert_eq!((got[0], got[15], got[16], got[31]), (-2.0, 1.75, 1.75, -2.0));
}

#[test]
fn q4_1_is_nibble_times_scale_plus_min() {
    let mut block = f16_bytes(0.5).to_vec();
    block.extend(f16_bytes(-3.0));
    block.extend((0..16u8).map(|j| (j ^ 5) << 4 | (15 - j)));
    // Two blocks: the second with another scale, so blocks are not mixed up.
    block.extend(f16_bytes(2.0));
    block.extend(f16_bytes(1.0));
    block.extend([0x21u8; 16]);
    let got = dequantize(kind("Q4_1"), &block).unwrap();
    let mut want: Vec<f32> = (0..16).map(|j| (15 - j) as f32 * 0.5 - 3.0).collect();
    want.extend((0..16).map(|j| (j ^ 5) as f32 * 0.5 - 3.0));
    want.extend([3.0; 16]); // low nibble 1: 1·2 + 1
    want.extend([5.0; 16]); // high nibble 2: 2·2 + 1
    assert_eq!(got, want);
}

#[test]
fn float_types_decode_bit_for_bit() {
    let values = [0.0f32, -1.5, 65504.0, 1e-7, f32::INFINITY];
    let f32s: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
    assert_eq!(dequantize(kind("F32"), &f32s).unwrap(), values);
    let f16s: Vec<u8> = values.iter().flat_map(|&x| f16_bytes(x)).collect();
    let want: Vec<f32> = values.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    assert_eq!(dequantize(kind("F16"), &f16s).unwrap(), want);
    // bf16 is the top half of an f32.
    let bf16s: Vec<u8> = [0x3fc0u16, 0xc2f7, 0x0001].iter().flat_map(|x| x.to_le_bytes()).collect();
    let want = [1.5f32, f32::from_bits(0xc2f7_0000), f32::from_bits(0x0001_0000)];
    assert_eq!(dequantize(kind("BF16"), &bf16s).unwrap(), want);
}

// ---- broken and unsupported files ----

/// The tiny fixture taken apart, to be changed and written again.
fn tiny_parts() -> (BTreeMap<String, Value>, Vec<GgufTensor>) {
    common::gguf_parts(TINY)
}

fn import_err(bytes: &[u8]) -> String {
    match import(bytes) {
        Ok(_) => panic!("importing should have failed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_test_writer_reproduces_the_fixture() {
    let (meta, tensors) = tiny_parts();
    let again = import(&write_gguf(&meta, &tensors)).unwrap();
    assert_eq!(again.tensors, import(TINY).unwrap().tensors);
}

#[test]
fn truncated_files_say_so() {
    let len = TINY.len();
    for cut in [0, 3, 4, 10, 24, 100, 1000, 5000, 20000, len / 2, len - 64, len - 1] {
        let msg = import_err(&TINY[..cut]);
        assert!(msg.contains("truncated") || (cut < 4 && msg.contains("not a GGUF file")), "cut at {cut}: {msg}");
    }
    // Cut inside the data section: the last tensor is named.
    let last = Gguf::parse(TINY).unwrap().tensors.iter().max_by_key(|t| t.offset).unwrap().name.clone();
    let msg = import_err(&TINY[..len - 64]);
    assert!(msg.contains(&format!("tensor `{last}` lies outside the data section")), "{msg}");
}

#[test]
fn every_prefix_and_corruption_errors_without_panicking() {
    // Each header byte replaced by 0xFF in turn: an error or a valid import, never a panic.
    let header_len = 4096.min(TINY.len());
    for i in (0..header_len).step_by(7) {
        let mut bytes = TINY.to_vec();
        bytes[i] = 0xFF;
        let _ = import(&bytes);
    }
    for cut in (0..header_len).step_by(13) {
        assert!(import(&TINY[..cut]).is_err());
    }
}

#[test]
fn bad_magic_and_version_are_named() {
    let mut bytes = TINY.to_vec();
    bytes[..4].copy_from_slice(b"GGML");
    assert_eq!(import_err(&bytes), "not a GGUF file: it starts with \"GGML\" instead of \"GGUF\"");
    bytes[..4].copy_from_slice(b"GGUF");
    bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(import_err(&bytes).contains("GGUF version 1 is not supported"));
    // A big-endian file reads as version 0x03000000.
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(import_err(&bytes).contains("GGUF version 50331648 is not supported"));
}

#[test]
fn lying_tensor_offset_or_size_is_named() {
    let (meta, mut tensors) = tiny_parts();
    // More rows than the bytes stored: the last tensor now reaches past the end of the file.
    let last = tensors.len() - 1;
    tensors[last].1[1] *= 4;
    let msg = import_err(&write_gguf(&meta, &tensors));
    assert!(msg.contains(&format!("tensor `{}` lies outside the data section", tensors[last].0)), "{msg}");

    // An offset past the data: patch the first tensor's offset field in a written file.
    let (meta, tensors) = tiny_parts();
    let mut bytes = write_gguf(&meta, &tensors);
    let name = &tensors[0].0;
    let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
    let offset_at = at + name.len() + 4 + 8 * tensors[0].1.len() + 4;
    bytes[offset_at..offset_at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let msg = import_err(&bytes);
    assert!(msg.contains(&format!("tensor `{name}` lies outside the data section: it claims bytes 1099511627776..")), "{msg}");

    // An offset off the alignment.
    bytes[offset_at..offset_at + 8].copy_from_slice(&8u64.to_le_bytes());
    let msg = import_err(&bytes);
    assert!(msg.contains("offset 8 is not a multiple of the alignment 64"), "{msg}");
}

#[test]
fn lying_counts_are_caught_before_allocating() {
    let mut bytes = TINY.to_vec();
    // tensor count = 2^60
    bytes[8..16].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(import_err(&bytes).contains("the tensor count (1152921504606846976 entries)"));
    let mut bytes = TINY.to_vec();
    bytes[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(import_err(&bytes).contains("truncated"));
}

#[test]
fn unsupported_quant_types_name_type_and_tensor() {
    let (meta, mut tensors) = tiny_parts();
    // Q5_0 has 32-value blocks of 22 bytes: a valid file loratab cannot decode.
    let t = tensors.iter_mut().find(|t| t.0 == "blk.1.ffn_up.weight").unwrap();
    t.2 = 6;
    t.3 = vec![0; (t.1[0] * t.1[1] / 32 * 22) as usize];
    let msg = import_err(&write_gguf(&meta, &tensors));
    assert_eq!(
        msg,
        "tensor `blk.1.ffn_up.weight` is stored as Q5_0; loratab imports F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors (convert the model to one of these, e.g. Q8_0)"
    );
    // A K-quant at the reader level.
    let bytes = write_gguf(&BTreeMap::new(), &[("w".into(), vec![256], 12, vec![0; 144])]);
    let g = Gguf::parse(&bytes).unwrap();
    assert!(matches!(g.tensor_f32(&g.tensors[0]), Err(GgufError::UnsupportedType { kind: "Q4_K", .. })));
    // A type code ggml does not have.
    let bytes = write_gguf(&BTreeMap::new(), &[("w".into(), vec![4], 99, vec![0; 16])]);
    assert_eq!(Gguf::parse(&bytes).unwrap_err().to_string(), "tensor `w` has ggml type 99, which loratab does not know");
}

/// A tensor holding ±∞ or NaN — a value of a float tensor, or a quantized block's f16 scale — is
/// refused on import with the file's name for it, in every stored format, before a folder is written
/// or a model built.
#[test]
fn non_finite_tensors_are_refused_by_name() {
    let (meta, tensors) = tiny_parts();
    // (ggml type code, bytes per block of 32 or per value, where the bad value goes, its bytes).
    let inf16 = f16_bytes(f32::INFINITY).to_vec();
    let cases: [(u32, Vec<u8>, &str); 6] = [
        (0, f32::NEG_INFINITY.to_le_bytes().to_vec(), "F32 −∞"),
        (1, f16_bytes(f32::NAN).to_vec(), "F16 NaN"),
        (30, (f32::INFINITY.to_bits() >> 16).to_le_bytes()[..2].to_vec(), "BF16 ∞"),
        (8, inf16.clone(), "Q8_0 scale ∞"),
        (2, inf16.clone(), "Q4_0 scale ∞"),
        (3, f16_bytes(f32::NEG_INFINITY).to_vec(), "Q4_1 scale −∞"),
    ];
    for (code, bad, what) in cases {
        let mut tensors = tensors.clone();
        let t = tensors.iter_mut().find(|t| t.2 == code && t.0.starts_with("blk.")).unwrap_or_else(|| panic!("the fixture has no {what} tensor"));
        // The second block's (or value's) first bytes: the scale of a quantized block.
        let at = match code {
            0 => 4,
            1 | 30 => 2,
            8 => 34,
            2 => 18,
            _ => 20,
        };
        t.3[at..at + bad.len()].copy_from_slice(&bad);
        let name = t.0.clone();
        let msg = import_err(&write_gguf(&meta, &tensors));
        assert_eq!(msg, format!("tensor `{name}` contains NaN or infinite values: the file is corrupted or the model diverged when it was trained; use another copy of the model"), "{what}");
    }
}

#[test]
fn non_llama_files_are_refused() {
    let (mut meta, tensors) = tiny_parts();
    meta.insert("general.architecture".into(), Value::Str("gpt2".into()));
    assert_eq!(
        import_err(&write_gguf(&meta, &tensors)),
        "architecture `gpt2` is not supported: loratab imports llama GGUF files"
    );
    let (mut meta, tensors) = tiny_parts();
    meta.insert("tokenizer.ggml.model".into(), Value::Str("llama".into()));
    assert!(import_err(&write_gguf(&meta, &tensors)).contains("tokenizer.ggml.model `llama` is not supported"));
    let (mut meta, tensors) = tiny_parts();
    meta.insert("tokenizer.ggml.pre".into(), Value::Str("default".into()));
    assert!(import_err(&write_gguf(&meta, &tensors)).contains("tokenizer.ggml.pre `default` is not supported"));
    let (mut meta, tensors) = tiny_parts();
    meta.remove("llama.attention.head_count");
    assert_eq!(import_err(&write_gguf(&meta, &tensors)), "metadata `llama.attention.head_count` is missing");
    let (meta, mut tensors) = tiny_parts();
    tensors.retain(|t| t.0 != "blk.1.attn_v.weight");
    assert_eq!(import_err(&write_gguf(&meta, &tensors)), "tensor `blk.1.attn_v.weight` is missing");
    let (mut meta, tensors) = tiny_parts();
    if let Some(Value::Array(tokens)) = meta.get_mut("tokenizer.ggml.tokens") {
        tokens.push(Value::Str("<|extra|>".into()));
    }
    assert!(import_err(&write_gguf(&meta, &tensors)).contains("it has 401 tokens but token_embd.weight has only 400 rows"));
    let (meta, mut tensors) = tiny_parts();
    tensors.push(("rope_freqs.weight".into(), vec![8], 0, vec![0; 32]));
    assert!(import_err(&write_gguf(&meta, &tensors)).contains("tensor `rope_freqs.weight` is not part of a llama model"));
}

/// The tokenizer.json written for the fixture loads in the project's tokenizer as a file would.
#[test]
fn tokenizer_json_loads_on_its_own() {
    let files = import(TINY).unwrap().files(false).unwrap();
    let json = &files.iter().find(|(n, _)| *n == "tokenizer.json").unwrap().1;
    let t = Tokenizer::from_bytes(json).unwrap();
    assert_eq!(t.vocab_size(), 400);
    assert_eq!(t.encode("<|im_start|>hi<|im_end|>").unwrap()[..1], [1]);
}

/// A GGUF's stop ids: its EOS (`tokenizer.ggml.eos_token_id`, `<|im_end|>` here, which its chat
/// template also writes) and, when the file names one, its end-of-turn token
/// (`tokenizer.ggml.eot_token_id`), which the imported generation_config.json lists beside the EOS
/// as transformers lists several stop ids.
#[test]
fn stop_ids_are_the_eos_and_end_of_turn_tokens() {
    let (model, tok) = import(TINY).unwrap().model().unwrap();
    let (im_end, endoftext) = (tok.token_to_id("<|im_end|>").unwrap(), tok.token_to_id("<|endoftext|>").unwrap());
    assert_eq!(model.config.stop_ids, [im_end]);
    let (mut meta, tensors) = tiny_parts();
    meta.insert("tokenizer.ggml.eot_token_id".into(), Value::U32(endoftext));
    let imported = import(&write_gguf(&meta, &tensors)).unwrap();
    assert_eq!(imported.generation_config["eos_token_id"], serde_json::json!([im_end, endoftext]));
    assert_eq!(imported.model().unwrap().0.config.stop_ids, [im_end, endoftext]);
}
