#!/usr/bin/env python3
"""Check `loratab export-trl`: the exported TRL SFTTrainer + PEFT script trains the same run.

For three small random models and datasets (golden-style, CPU):

  llama-qvo   tests/fixtures/llama-tiny, {"prompt", "completion"} pairs, the plain template, loss on
              the answers only, batch 2 × 2 accumulated micro-batches, warmup 2, r 4 on q, v, o;
  chat-all    a random Llama with tests/fixtures/chat/tokenizer.json and SmolLM2's ChatML template
              (tokenizer_config.json), {"messages"} with system messages, several turns and unicode,
              every target, rsLoRA, batch 3;
  gpt2-qv     tests/fixtures/gpt2-tiny (whose config has dropouts of 0.1, which the script turns off),
              pairs trained on every token (--no-mask-prompt), q and v of the fused c_attn (k's rows
              of B stay zero: the script masks their gradient).

each is exported (`loratab export-trl … --steps 3`), trained one step by `loratab train` (its
summary's `loss` is the first step's loss), and the exported script is run for its 3 steps with
this Python; the script's printed first loss must equal loratab's to 1e-4. The validation losses
after 3 steps are printed side by side (not asserted: loratab's trainer and PyTorch's round
differently over a few AdamW steps).

Usage: .venv-golden/bin/python tools/check_trl_export.py [--loratab PATH]   (needs trl, peft)
Build first: cargo build --release (the default PATH is $CARGO_TARGET_DIR or target, /release/loratab).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
TOLERANCE = 1e-4

PAIRS = [
    ("What is your name?", "My name is Tom."),
    ("Where do you live?", "I live by the sea, in a grey house."),
    ("What do you eat?", "Bread and fish."),
    ("Who is your friend?", "Anna, the baker."),
    ("What colour is the sky?", "Grey, mostly."),
    ("When do you sleep?", "After the bells."),
    ("Why?", "Because the bells are loud and then it is quiet."),
    ("How old are you?", "Forty."),
    ("Do you like the sea?", "Yes, very much."),
    ("What is two and two?", "Four."),
    ("Say something long.", "The wind came in over the harbour wall and all the boats rocked at once."),
]

CHATS = [
    [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Two plus two?"},
     {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And times three?"},
     {"role": "assistant", "content": "Twelve."}],
    [{"role": "user", "content": "Translate 'thank you' to Japanese."},
     {"role": "assistant", "content": "ありがとう (arigatō) 🙏"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello — how can I help?"},
     {"role": "user", "content": "Nothing, thanks."}, {"role": "assistant", "content": "Then have a fine day."}],
    [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Is it raining?"},
     {"role": "assistant", "content": "Not yet; take a coat."}],
    [{"role": "user", "content": "Name a café."}, {"role": "assistant", "content": "Café Ünïcödé, naïvely."}],
    [{"role": "user", "content": "Count to three."}, {"role": "assistant", "content": "One, two, three."}],
    [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Weather?"},
     {"role": "assistant", "content": "Fog."}, {"role": "user", "content": "Tomorrow?"},
     {"role": "assistant", "content": "Sun."}],
]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def chat_model(folder):
    """A random Llama with the chat fixture's tokenizer and SmolLM2's template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    golden = json.load(open(os.path.join(FIXTURES, "chat", "golden.json"), encoding="utf-8"))
    smol = golden["templates"]["smollm2"]
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    shutil.copy(os.path.join(FIXTURES, "chat", "tokenizer.json"), folder)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"chat_template": smol["template"], "bos_token": smol["bos_token"], "eos_token": smol["eos_token"],
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p.stdout


def check(loratab, work, name, model, data, flags):
    export = os.path.join(work, name + "-export")
    run([loratab, "export-trl", "--model", model, "--data", data, "--out", export, "--steps", "3", *flags])
    # One step of the same run (its loss does not depend on the schedule, so the warmup is dropped).
    one = [f for i, f in enumerate(flags) if f != "--warmup" and (i == 0 or flags[i - 1] != "--warmup")]
    summary = run([loratab, "train", "--model", model, "--data", data, "--out", os.path.join(work, name + "-adapter"),
                   "--steps", "1", "--log-every", "1", "--eval-every", "0", *one])
    ours = json.loads(summary.strip().splitlines()[-1])["loss"]
    out = run([sys.executable, os.path.join(export, "train_trl.py"), "--out", os.path.join(work, name + "-trl")])
    theirs = float(re.search(r"^first loss (\S+)", out, re.M).group(1))
    val = float(re.search(r"^validation loss ([0-9.]+)", out, re.M).group(1))
    diff = abs(ours - theirs)
    print(f"{name}: first loss loratab {ours:.6f}  TRL {theirs:.6f}  |diff| {diff:.2e}; TRL validation after 3 steps {val:.4f}")
    return diff <= TOLERANCE


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    parser.add_argument("--loratab", default=os.path.join(target, "release", "loratab"))
    args = parser.parse_args()
    ok = True
    with tempfile.TemporaryDirectory() as work:
        pairs = os.path.join(work, "pairs.jsonl")
        write_jsonl(pairs, [{"prompt": p, "completion": c} for p, c in PAIRS])
        chats = os.path.join(work, "chats.jsonl")
        write_jsonl(chats, [{"messages": m} for m in CHATS])
        chat = os.path.join(work, "chat-llama")
        chat_model(chat)
        cases = [
            ("llama-qvo", os.path.join(FIXTURES, "llama-tiny"), pairs,
             ["--batch", "2", "--grad-accum", "2", "--warmup", "2", "--rank", "4", "--targets", "q,v,o", "--seed", "3",
              "--seq-len", "32", "--lr", "3e-3"]),
            ("chat-all", chat, chats,
             ["--batch", "3", "--rank", "2", "--alpha", "4", "--rslora", "--targets", "q,k,v,o,gate,up,down",
              "--seed", "5", "--seq-len", "64", "--lr", "1e-2", "--decay", "linear"]),
            ("gpt2-qv", os.path.join(FIXTURES, "gpt2-tiny"), pairs,
             ["--batch", "4", "--no-mask-prompt", "--targets", "q,v", "--seed", "1", "--seq-len", "32",
              "--weight-decay", "0.1"]),
        ]
        for name, model, data, flags in cases:
            ok &= check(args.loratab, work, name, model, data, flags)
    print("OK" if ok else f"FAILED: a first loss differs by more than {TOLERANCE}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
