"""Check a full-size GPT-2 (124M shapes, random weights) end to end against transformers.

GPT-2's token embedding is 50257 x 768 f32 = 147 MiB, over WebGPU's default 128 MiB storage binding
(and lavapipe's actual limit), so this exercises loratab's row-split embedding and tied LM head at
real size. No model hub is reachable, so the weights are random (seeded); the tokenizer is the small
fixture tokenizer (its 300 ids are a subset of GPT-2's vocabulary range).

    .venv-golden/bin/python tools/check_gpt2_124m.py [--loratab target/debug/loratab] [--seq-len 64]

Prints transformers' loss, loratab's, and their difference (must be < 1e-4).
"""
import argparse, json, shutil, subprocess, sys, tempfile
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel
from tokenizers import Tokenizer

root = Path(__file__).resolve().parent.parent
p = argparse.ArgumentParser()
p.add_argument("--loratab", default=str(root / "target/debug/loratab"))
p.add_argument("--seq-len", type=int, default=64)
args = p.parse_args()

torch.manual_seed(0)
config = GPT2Config(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257)
model = GPT2LMHeadModel(config).eval()
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "gpt2-124m-random"
    model.save_pretrained(out)
    shutil.copy(root / "tests/fixtures/gpt2-tiny/tokenizer.json", out / "tokenizer.json")
    text = (root / "tests/fixtures/eval.txt").read_text()
    ids = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), args.seq_len):
            chunk = ids[i : i + args.seq_len]
            if len(chunk) < 2:
                continue
            t = torch.tensor([chunk])
            loss = model(t, labels=t).loss.item()
            total += loss * (len(chunk) - 1)
            count += len(chunk) - 1
    want = total / count
    r = subprocess.run(
        [args.loratab, "eval", "--model", str(out), "--text", str(root / "tests/fixtures/eval.txt"),
         "--seq-len", str(args.seq_len)],
        capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"loratab failed: {r.stderr}")
    got = json.loads(r.stdout)
    print(f"params {sum(p.numel() for p in model.parameters())}, tokens {count}")
    print(f"transformers loss {want:.6f}, loratab loss {got['loss']:.6f}, |diff| {abs(want - got['loss']):.2e}")
    sys.exit(0 if abs(want - got["loss"]) < 1e-4 and got["tokens"] == count else 1)
