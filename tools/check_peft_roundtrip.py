"""An adapter written by `loratab train` loads in PEFT unchanged and scores loratab's loss.

    .venv-golden/bin/python tools/check_peft_roundtrip.py BASE_DIR ADAPTER_DIR [--seq-len 64] [--gguf FILE]

Loads BASE_DIR with transformers, wraps it with PeftModel.from_pretrained(ADAPTER_DIR), scores
tests/fixtures/eval.txt with `loratab eval`'s definition and compares with
`loratab eval --model BASE_DIR --adapter ADAPTER_DIR` (|diff| must be < 1e-4). Then does the same
for `loratab merge`'s folder loaded by transformers alone. With --gguf FILE (an adapter trained on
a GGUF), loratab reads FILE itself (`--model FILE`) and BASE_DIR is FILE as `loratab import-gguf`
writes it: the adapter must be PEFT's adapter for that dequantized model.
"""
import argparse, json, subprocess, sys, tempfile
from pathlib import Path

import torch
from peft import PeftModel
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

root = Path(__file__).resolve().parent.parent
p = argparse.ArgumentParser()
p.add_argument("base")
p.add_argument("adapter")
p.add_argument("--seq-len", type=int, default=64)
p.add_argument("--loratab", default=str(root / "target/debug/loratab"))
p.add_argument("--gguf", help="the GGUF loratab reads (BASE_DIR being its import)")
args = p.parse_args()
text = root / "tests/fixtures/eval.txt"


def score(model):
    ids = Tokenizer.from_file(str(Path(args.base) / "tokenizer.json")).encode(text.read_text(), add_special_tokens=False).ids
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ids), args.seq_len):
            chunk = ids[i : i + args.seq_len]
            if len(chunk) >= 2:
                t = torch.tensor([chunk])
                total += model(t, labels=t).loss.item() * (len(chunk) - 1)
                count += len(chunk) - 1
    return total / count


def loratab(*a):
    r = subprocess.run([args.loratab, *a], capture_output=True, text=True)
    if r.returncode:
        sys.exit(r.stderr)
    return r.stdout


base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32, attn_implementation="eager").eval()
peft_loss = score(PeftModel.from_pretrained(base, args.adapter).eval())
model = args.gguf or args.base
ours = json.loads(loratab("eval", "--model", model, "--adapter", args.adapter, "--text", str(text), "--seq-len", str(args.seq_len)))["loss"]
print(f"PEFT {peft_loss:.6f}  loratab {ours:.6f}  |diff| {abs(peft_loss - ours):.2e}")
with tempfile.TemporaryDirectory() as out:
    loratab("merge", "--model", model, "--adapter", args.adapter, "--out", out)
    merged = score(AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval())
print(f"merged folder in transformers {merged:.6f}  |diff| {abs(merged - ours):.2e}")
sys.exit(0 if abs(peft_loss - ours) < 1e-4 and abs(merged - ours) < 1e-4 else 1)
