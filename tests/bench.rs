//! `loratab bench`'s cases: the PyTorch side builds its models from `hf_config`, so that config must
//! read back (through the same loader as real model folders) as exactly the shape loratab runs;
//! the random models have every parameter of that shape; the table's ratios point the right way.
#![cfg(not(target_arch = "wasm32"))]

use loratab::bench::{self, BenchOptions, Results, Row};
use loratab::model::Config;

#[test]
fn hf_configs_read_back_as_the_benchmarked_shapes() {
    for name in bench::MODELS {
        let c = bench::model_config(name).unwrap();
        let back = Config::from_json(&bench::hf_config(&c).to_string()).unwrap();
        assert_eq!(back, c, "{name}");
    }
}

#[test]
fn random_default_model_has_every_parameter() {
    let c = bench::model_config("default").unwrap();
    let m = bench::random_model(&c, 0);
    // A Llama's parameters from its shape: per block two RMSNorms, q, k, v, o and the SwiGLU MLP.
    let (d, f, qd, kvd, v) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim(), c.vocab_size);
    let block = 2 * d + d * qd + 2 * d * kvd + qd * d + 3 * d * f;
    let head = if c.tie_word_embeddings { 0 } else { v * d };
    let params = c.num_layers * block + v * d + d + head;
    assert_eq!(m.num_params(), params);
    // Random models are f32, whole on the GPU when nothing is split.
    assert_eq!(loratab::train::memory::weights(&m, u64::MAX), 4 * params as u64);
}

#[test]
fn cases_cover_every_model_and_sequence() {
    let opts = BenchOptions::default();
    let cases = bench::cases(&opts).unwrap();
    assert_eq!(cases.train.len(), 3 * 2);
    assert_eq!(cases.matmul.len(), 3 * 6);
    assert_eq!(cases.generate.iter().map(|c| c.model.as_str()).collect::<Vec<_>>(), ["default", "smollm2"]);
    // Keys are unique: each pairs with exactly one PyTorch figure.
    let mut keys: Vec<&str> = cases.matmul.iter().map(|c| c.key.as_str()).chain(cases.train.iter().map(|c| c.key.as_str())).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 3 * 6 + 3 * 2);
}

#[test]
fn ratios_above_one_mean_loratab_is_faster() {
    let row = |key: &str, value, unit: &str| Row { key: key.into(), value, unit: unit.into() };
    let ours = Results { tool: "loratab".into(), rows: vec![row("t", 50.0, "ms"), row("g", 4.0, "GFLOP/s")], ..Results::default() };
    let theirs = Results { tool: "PyTorch".into(), rows: vec![row("t", 100.0, "ms"), row("g", 2.0, "GFLOP/s")], ..Results::default() };
    let table = bench::table(&ours, Some(&theirs));
    assert!(table.contains("| t | 50.00 ms | 100 ms | 2.00× |"), "{table}");
    assert!(table.contains("| g | 4.00 GFLOP/s | 2.00 GFLOP/s | 2.00× |"), "{table}");
}
