#!/usr/bin/env python3
"""The PyTorch + PEFT side of `loratab bench`: the same cases (written by loratab as JSON), in f32.

    python tools/bench_torch.py CASES.json OUT.json [--device cpu|cuda] [--attn sdpa|eager] [--threads N]

(`--threads` defaults to $BENCH_TORCH_THREADS, else torch's default.)

`loratab bench --torch PYTHON` runs this itself; run it by hand to re-measure one side. Each
result row uses loratab's key, so the table puts the two figures side by side:
- matmul: torch.matmul on the same [M,K]·[K,N] shapes and transposes (views, as a Linear does),
  GFLOP/s from the median of 3 timings of enough back-to-back calls for ~0.3 s;
- train: transformers model of the same config with random weights + PEFT LoRA (same r, alpha,
  targets; dropout 0), AdamW (lr, betas 0.9/0.999, eps 1e-8, weight decay 0), global-norm clipping
  as loratab (clip_grad_norm_), labels = input ids (next-token loss over B·(T−1) positions);
  warmup steps untimed, then the mean of the timed steps (wall, and on CPU the process's CPU time
  over all threads); memory: torch.cuda.max_memory_allocated
  over the run minus what was allocated before the model (CUDA only);
- forward: base model, PEFT model (unmerged), merge_and_unload (merged), under no_grad, logits and
  loss of the same batch; median of the repetitions;
- generate: `model.generate` (greedy, KV cache, EOS off so every run makes all its tokens) after the
  same-length random prompt: T(1) (prefill + the first token) and T(n) for n new tokens, medians of
  the repetitions; per new token (T(n) − T(1)) / (n − 1), prefill per token T(1) / prompt.
On CUDA, TF32 is off (torch.backends.*.allow_tf32 = False): an f32 against f32 comparison.
"""

import argparse
import os
import json
import platform
import statistics
import time

import torch


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def bench_matmul(case, device):
    m, n, k, layout = case["m"], case["n"], case["k"], case["layout"]
    g = torch.Generator().manual_seed(1)
    rand = lambda *s: (torch.rand(*s, generator=g) * 2 - 1).to(device)
    if layout == "XW":
        a, b = rand(m, k), rand(k, n)
        fn = lambda: torch.matmul(a, b)
    elif layout == "XWt":
        a, b = rand(m, k), rand(n, k)
        fn = lambda: torch.matmul(a, b.t())
    else:  # XtG
        a, b = rand(k, m), rand(k, n)
        fn = lambda: torch.matmul(a.t(), b)
    fn()
    once = timed(fn, device)
    reps = max(1, min(500, int(0.3 / max(once, 1e-6))))

    def many():
        for _ in range(reps):
            fn()

    t = statistics.median(timed(many, device) for _ in range(3)) / reps
    return 2.0 * m * n * k / t / 1e9


def build(hf_config, device, attn):
    import transformers

    cfg = dict(hf_config)
    kind = cfg.pop("model_type")
    if kind == "gpt2":
        config = transformers.GPT2Config(**cfg)
        cls = transformers.GPT2LMHeadModel
    else:
        config = transformers.LlamaConfig(**cfg)
        cls = transformers.LlamaForCausalLM
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = cls(config).to(device=device, dtype=torch.float32)
    return model


def peft_model(model, lora):
    import peft

    cfg = peft.LoraConfig(
        r=lora["rank"],
        lora_alpha=lora["alpha"],
        target_modules=lora["peft_targets"],
        lora_dropout=0.0,
        fan_in_fan_out=type(model).__name__.startswith("GPT2"),
    )
    return peft.get_peft_model(model, cfg)


def tokens(vocab, b, t, device, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g).to(device)


def bench_train(case, device, attn):
    rows = []
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    model = peft_model(build(case["hf_config"], device, attn), case["lora"])
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=case["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    vocab = case["hf_config"]["vocab_size"]
    b, t = case["batch"], case["seq"]

    def step(i):
        ids = tokens(vocab, b, t, device, 100 + i)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, case["max_grad_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(case["warmup"]):
        step(i)
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(case["steps"]):
        step(case["warmup"] + i)
    sync(device)
    dt = (time.perf_counter() - t0) / case["steps"]
    cpu = (time.process_time() - c0) / case["steps"]
    key = case["key"]
    rows.append({"key": f"{key} step", "value": dt * 1e3, "unit": "ms"})
    if device == "cpu":
        # All threads' CPU time: what the step costs whatever else shares the cores.
        rows.append({"key": f"{key} step CPU time", "value": cpu * 1e3, "unit": "cpu-ms"})
    rows.append({"key": f"{key} tokens/s", "value": b * t / dt, "unit": "tok/s"})
    if device == "cuda":
        rows.append({"key": f"{key} memory", "value": (torch.cuda.max_memory_allocated() - before) / 1e6, "unit": "MB"})
    del model, opt, params
    return rows


def bench_forward(case, device, attn):
    import peft

    base = build(case["hf_config"], device, attn).eval()
    vocab = case["hf_config"]["vocab_size"]
    ids = tokens(vocab, case["batch"], case["seq"], device, 5)
    key = case["key"]
    rows = []
    base_times = []

    def run(m):
        with torch.no_grad():
            return m(input_ids=ids, labels=ids).loss

    for r in case["ranks"]:
        lora = dict(case["lora"], rank=r, alpha=2 * r)
        model = peft_model(base, lora).eval()
        run(model)
        unmerged = []
        for _ in range(case["reps"]):
            with model.disable_adapter():
                base_times.append(timed(lambda: run(model), device))
            unmerged.append(timed(lambda: run(model), device))
        merged_model = model.merge_and_unload()
        merged = [timed(lambda: run(merged_model), device) for _ in range(case["reps"])]
        rows.append({"key": f"{key} merged r{r}", "value": statistics.median(merged) * 1e3, "unit": "ms"})
        rows.append({"key": f"{key} unmerged r{r}", "value": statistics.median(unmerged) * 1e3, "unit": "ms"})
        # merge_and_unload changed base's weights in place: start the next rank from a fresh copy.
        base = build(case["hf_config"], device, attn).eval()
    rows.insert(0, {"key": f"{key} base", "value": statistics.median(base_times) * 1e3, "unit": "ms"})
    return rows


def bench_generate(case, device, attn):
    model = build(case["hf_config"], device, attn).eval()
    # Random weights emit EOS (id 2 in LlamaConfig) by chance: keep generating to the full length.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = tokens(case["hf_config"]["vocab_size"], 1, case["prompt"], device, 5)
    mask = torch.ones_like(ids)

    def gen(n):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, use_cache=True)
        assert out.shape[1] == ids.shape[1] + n, out.shape

    def both(n):
        c = time.process_time()
        wall = timed(lambda: gen(n), device)
        return wall, time.process_time() - c

    n = case["new_tokens"]
    gen(2)
    reps = case["reps"]
    one = [both(1) for _ in range(reps)]
    many = [both(n) for _ in range(reps)]
    med = lambda runs, i: statistics.median(r[i] for r in runs)
    decode = (med(many, 0) - med(one, 0)) / (n - 1)
    key = case["key"]
    rows = [
        {"key": f"{key} decode tokens/s", "value": 1.0 / decode, "unit": "tok/s"},
        {"key": f"{key} decode ms/token", "value": decode * 1e3, "unit": "ms"},
        {"key": f"{key} prefill ms/token", "value": med(one, 0) * 1e3 / case["prompt"], "unit": "ms"},
    ]
    if device == "cpu":
        # All threads' CPU time: what a token costs whatever else shares the cores.
        cpu_decode = (med(many, 1) - med(one, 1)) / (n - 1)
        rows.append({"key": f"{key} decode CPU ms/token", "value": cpu_decode * 1e3, "unit": "cpu-ms"})
        rows.append({"key": f"{key} prefill CPU ms/token", "value": med(one, 1) * 1e3 / case["prompt"], "unit": "cpu-ms"})
    return rows


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or "cpu"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cases")
    ap.add_argument("out")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    # On a CPU shared with other work, torch's OpenMP threads spin against each other: one thread can
    # be several times faster than two there (measured: 45 ms vs 100–950 ms for one forward).
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_TORCH_THREADS", "0")))
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    cases = json.load(open(args.cases))
    import peft
    import transformers

    # loratab's compact-weight cases (f16, q8_0, ...) have no PyTorch CPU counterpart: f32 only here.
    f32 = lambda c: c.get("format", "f32") == "f32"
    cases["matmul"] = [c for c in cases["matmul"] if f32(c)]
    cases["train"] = [c for c in cases["train"] if f32(c) and not c.get("grad_checkpoint")]
    cases["generate"] = [c for c in cases.get("generate", []) if f32(c)]
    rows = []
    for c in cases["matmul"]:
        v = bench_matmul(c, args.device)
        print(f"{c['key']}: {v:.2f} GFLOP/s", flush=True)
        rows.append({"key": c["key"], "value": v, "unit": "GFLOP/s"})
    for c in cases["forward"]:
        rows += bench_forward(c, args.device, args.attn)
        print(f"{c['key']} done", flush=True)
    for c in cases.get("generate", []):
        r = bench_generate(c, args.device, args.attn)
        print(f"{c['key']}: {r[1]['value']:.1f} ms/token", flush=True)
        rows += r
    for c in cases["train"]:
        r = bench_train(c, args.device, args.attn)
        print(f"{c['key']}: {r[0]['value']:.0f} ms/step", flush=True)
        rows += r
    backend = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}, f32"
    backend += f", {args.attn} attention" + (", TF32 off" if args.device == "cuda" else "")
    out = {"tool": "PyTorch+PEFT", "device": device_name(args.device), "backend": backend, "rows": rows}
    json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
