#!/usr/bin/env python3
"""Pretrain loratab's embedded default model: a small Llama on Jane Austen's six novels.

Offline tool (PyTorch + transformers + tokenizers from PyPI). Every step is reproducible from
the seed and resumable from the last checkpoint:

    python tools/pretrain.py data        # Debian r-cran-janeaustenr -> work/{train,val}.txt
    python tools/pretrain.py tokenizer   # byte-level BPE, 4096 tokens -> work/tokenizer.json
    python tools/pretrain.py train --minutes 60   # resumes from work/ckpt.pt if present
                                                  # (--device cuda on a GPU machine: same steps)
    python tools/pretrain.py export      # -> models/austen-5m/ (f16 safetensors + provenance)

Data: the novels ship as R lazy-load databases (data/Rdata.rdb/.rdx); PyPI `rdata` decodes them.
Hard-wrapped lines are joined into paragraphs; the last 5% of each novel's paragraphs is the
held-out validation text, so validation is the same distribution but never trained on.
"""
import argparse
import gzip
import json
import math
import os
import struct
import sys
import time
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "pretrain")
OUT = os.path.join(ROOT, "models", "austen-5m")
RDATA = "/usr/lib/R/site-library/janeaustenr/data/Rdata"
NOVELS = ["sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion"]
VOCAB = 4096
SEED = 1234
EOT = "<|endoftext|>"

# Model shape: ~5.4M parameters, 10.8 MB in f16, under the 12 MB budget with the tokenizer.
MODEL = dict(
    vocab_size=VOCAB, hidden_size=256, intermediate_size=688, num_hidden_layers=6,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
    attention_dropout=0.0, hidden_act="silu",
)
TRAIN = dict(seq_len=256, batch=16, lr=2e-3, min_lr=1e-4, warmup=100, total_steps=1600,
             restarts=[(5e-4, 600), (3e-4, 800)], cooldown=(400, 1e-5), ema=0.995,
             weight_decay=0.1, clip=1.0, dropout=0.2, eval_every=200, ckpt_every=100)
# restarts: (peak lr, steps) of further, shorter cosine cycles after total_steps (warm restarts, 50
# warmup steps each): with dropout the model is still improving at the end of each cycle.
# cooldown: (steps, final lr): after the last cycle, lr falls linearly from min_lr to the final lr
# (the "decay" phase of warmup-stable-decay schedules: most of a run's last gain comes from it).
# ema: during the last cycle and the cooldown an exponential moving average of the weights (horizon ~200 steps) is
# kept beside them; it averages out the last steps' noise, and export ships it when it is better.
# dropout: on the embedding and on each residual branch (o_proj, down_proj), as GPT-2 places it;
# 930k training tokens are seen ~7 times, and without it the model overfits (at step 1600 with
# dropout 0: training loss ~3.1, validation 3.87).


def cmd_data(args):
    import rdata
    os.makedirs(WORK, exist_ok=True)
    index = rdata.conversion.convert(
        rdata.parser.parse_data(gzip.decompress(open(RDATA + ".rdx", "rb").read())))
    rdb = open(RDATA + ".rdb", "rb").read()
    train, val = [], []
    for name in NOVELS:
        off, ln = (int(x) for x in index["variables"][name])
        blob = rdb[off:off + ln]
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
        paragraphs, cur = [], []
        for line in list(lines) + [""]:
            line = str(line).strip()
            if line:
                cur.append(line)
            elif cur:
                paragraphs.append(" ".join(cur))
                cur = []
        cut = int(len(paragraphs) * 0.95)
        train.append("\n\n".join(paragraphs[:cut]))
        val.append("\n\n".join(paragraphs[cut:]))
        print(f"{name}: {len(paragraphs)} paragraphs, {cut} train")
    sep = "\n\n"
    open(os.path.join(WORK, "train.txt"), "w").write(sep.join(train) + "\n")
    open(os.path.join(WORK, "val.txt"), "w").write(sep.join(val) + "\n")
    print("train chars", sum(map(len, train)), "val chars", sum(map(len, val)))


def cmd_tokenizer(args):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers, processors
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=[EOT], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([os.path.join(WORK, "train.txt")], trainer)
    tok.save(os.path.join(WORK, "tokenizer.json"))
    print("vocab", tok.get_vocab_size())


def load_ids(split):
    import numpy as np
    from tokenizers import Tokenizer
    cache = os.path.join(WORK, f"{split}.ids.npy")
    if os.path.exists(cache):
        return np.load(cache)
    tok = Tokenizer.from_file(os.path.join(WORK, "tokenizer.json"))
    text = open(os.path.join(WORK, f"{split}.txt")).read()
    ids = np.array(tok.encode(text).ids, dtype=np.int32)
    np.save(cache, ids)
    return ids


def build_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    cfg = LlamaConfig(bos_token_id=0, eos_token_id=0, **MODEL)
    return LlamaForCausalLM(cfg)


def add_dropout(model, p):
    """Residual dropout (training only): transformers' Llama has none, so forward hooks add it on the
    token embedding and on the output of every attention and MLP branch. The exported model is
    unchanged (hooks are not saved) and evaluation (model.eval()) never drops."""
    import torch.nn.functional as F
    if p <= 0:
        return
    drop = lambda m, i, out: F.dropout(out, p, m.training)
    model.model.embed_tokens.register_forward_hook(drop)
    for layer in model.model.layers:
        layer.self_attn.o_proj.register_forward_hook(drop)
        layer.mlp.down_proj.register_forward_hook(drop)


def cycles_end():
    return TRAIN["total_steps"] + sum(n for _, n in TRAIN["restarts"])


def end_step():
    return cycles_end() + TRAIN["cooldown"][0]


def last_cycle_start():
    return cycles_end() - TRAIN["restarts"][-1][1] if TRAIN["restarts"] else 0


def lr_at(step):
    t = TRAIN
    if step >= cycles_end():
        n, final = t["cooldown"]
        return t["min_lr"] + (final - t["min_lr"]) * min(1.0, (step - cycles_end() + 1) / max(1, n))
    start = t["total_steps"]
    for peak, n in t["restarts"]:
        k = step - start
        if 0 <= k < n:
            if k < 50:
                return t["min_lr"] + (peak - t["min_lr"]) * (k + 1) / 50
            p = min(1.0, (k - 50) / max(1, n - 50))
            return t["min_lr"] + 0.5 * (peak - t["min_lr"]) * (1 + math.cos(math.pi * p))
        start += n
    if step < t["warmup"]:
        return t["lr"] * (step + 1) / t["warmup"]
    p = min(1.0, (step - t["warmup"]) / max(1, t["total_steps"] - t["warmup"]))
    return t["min_lr"] + 0.5 * (t["lr"] - t["min_lr"]) * (1 + math.cos(math.pi * p))


def evaluate(model, ids, seq_len):
    """Mean next-token loss over non-overlapping windows of the whole split (nats/token)."""
    import torch
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        n = (len(ids) - 1) // seq_len
        x = torch.from_numpy(ids[: n * seq_len + 1].astype("int64"))
        for i in range(0, n, 32):
            rows = range(i, min(n, i + 32))
            dev = next(model.parameters()).device
            inp = torch.stack([x[r * seq_len:(r + 1) * seq_len] for r in rows]).to(dev)
            tgt = torch.stack([x[r * seq_len + 1:(r + 1) * seq_len + 1] for r in rows]).to(dev)
            logits = model(input_ids=inp).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), reduction="sum")
            total += loss.item()
            count += tgt.numel()
    model.train()
    return total / count


def averaged(model, ema):
    """A copy of `model` holding the moving-average weights."""
    import copy
    m = copy.deepcopy(model)
    m.load_state_dict(ema)
    return m


def cmd_train(args):
    import numpy as np
    import torch
    torch.set_num_threads(args.threads)
    if args.device == "cuda":
        # Plain f32 on the GPU too (no TF32), so a run can move between CPU and GPU sessions.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    train_ids, val_ids = load_ids("train"), load_ids("val")
    t = TRAIN
    model = build_model().to(args.device)
    add_dropout(model, t["dropout"])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=t["lr"], betas=(0.9, 0.95), eps=1e-8)
    ckpt_path = os.path.join(WORK, "ckpt.pt")
    step, history, ema = 0, [], None
    gen = np.random.default_rng(SEED)
    if os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False, map_location=args.device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, history = ck["step"], ck["history"]
        gen.bit_generator.state = ck["rng"]
        if ck.get("torch_rng") is not None:
            torch.set_rng_state(ck["torch_rng"])  # the dropout masks go on as if never interrupted
        if ck.get("ema") is not None:
            ema = {k: v.to(args.device) for k, v in ck["ema"].items()}
        print(f"resumed at step {step}")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}, train tokens {len(train_ids)}, val tokens {len(val_ids)}")
    deadline = time.time() + args.minutes * 60
    seq = t["seq_len"]

    def save():
        # Saved on the CPU so the checkpoint resumes anywhere.
        cpu = lambda sd: {k: v.cpu() if hasattr(v, "cpu") else v for k, v in sd.items()}
        torch.save({"model": cpu(model.state_dict()), "opt": opt.state_dict(), "step": step,
                    "history": history, "rng": gen.bit_generator.state, "torch_rng": torch.get_rng_state(),
                    "ema": cpu(ema) if ema is not None else None}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)

    t0, tokens = time.time(), 0
    # --until N stops early (or goes on past the schedule's end at the cooldown's final lr).
    until = args.until or end_step()
    while step < until and time.time() < deadline:
        starts = gen.integers(0, len(train_ids) - seq - 1, size=t["batch"])
        batch = torch.from_numpy(np.stack([train_ids[s:s + seq + 1] for s in starts]).astype("int64")).to(args.device)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["clip"])
        opt.step()
        step += 1
        if step > last_cycle_start() and t["ema"]:
            with torch.no_grad():
                sd = model.state_dict()
                if ema is None:
                    ema = {k: v.detach().clone() for k, v in sd.items()}
                for k, v in sd.items():
                    ema[k].mul_(t["ema"]).add_(v, alpha=1 - t["ema"])
        tokens += batch[:, :-1].numel()
        if step % 10 == 0:
            rate = tokens / (time.time() - t0)
            print(f"step {step} loss {loss.item():.4f} lr {lr_at(step):.2e} {rate:.0f} tok/s", flush=True)
        if step % t["eval_every"] == 0 or step in (t["total_steps"], until):
            v = evaluate(model, val_ids, seq)
            history.append({"step": step, "train_loss": loss.item(), "val_loss": v})
            print(f"step {step} VAL {v:.4f} (ppl {math.exp(v):.1f})", flush=True)
            if ema is not None:
                history[-1]["ema_val_loss"] = ve = evaluate(averaged(model, ema), val_ids, seq)
                print(f"step {step} EMA VAL {ve:.4f} (ppl {math.exp(ve):.1f})", flush=True)
        if step % t["ckpt_every"] == 0:
            save()
    save()
    print(f"stopped at step {step}")


def unigram_loss(train_ids, val_ids):
    """Base rate: cross-entropy of the validation tokens under add-one unigram counts from train."""
    import numpy as np
    counts = np.bincount(train_ids, minlength=VOCAB).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val_ids].mean())


def sample(model, tok, prompt, n=60, seed=0, temperature=0.8, top_k=40):
    import torch
    torch.manual_seed(seed)
    ids = torch.tensor([tok.encode(prompt).ids])
    out = model.generate(ids, max_new_tokens=n, do_sample=True, temperature=temperature,
                         top_k=top_k, pad_token_id=0)
    return tok.decode(out[0].tolist())


def cmd_export(args):
    import torch
    from tokenizers import Tokenizer
    ck = torch.load(os.path.join(WORK, "ckpt.pt"), weights_only=False)
    model = build_model()
    model.load_state_dict(ck["model"])
    model.eval()
    val_ids, train_ids = load_ids("val"), load_ids("train")
    tok = Tokenizer.from_file(os.path.join(WORK, "tokenizer.json"))
    val_f32 = evaluate(model, val_ids, TRAIN["seq_len"])
    weights = "last step"
    if ck.get("ema") is not None:
        # Ship the moving average of the last cycle's weights when it scores better on held-out text.
        val_ema = evaluate(averaged(model, ck["ema"]), val_ids, TRAIN["seq_len"])
        print(f"held-out loss: last step {val_f32:.4f}, moving average {val_ema:.4f}")
        if val_ema < val_f32:
            model.load_state_dict(ck["ema"])
            val_f32, weights = val_ema, f"moving average (decay {TRAIN['ema']}) over the last cycle"
    model.eval()
    os.makedirs(OUT, exist_ok=True)
    model.half().save_pretrained(OUT, safe_serialization=True)
    model.float()
    # f16 storage rounds the weights: report the loss of the weights as shipped.
    from transformers import LlamaForCausalLM
    shipped = LlamaForCausalLM.from_pretrained(OUT, torch_dtype=torch.float32)
    val_f16 = evaluate(shipped, val_ids, TRAIN["seq_len"])
    tok.save(os.path.join(OUT, "tokenizer.json"))
    for f in ["generation_config.json"]:
        p = os.path.join(OUT, f)
        if os.path.exists(p):
            os.remove(p)
    prompts = ["It is a truth universally acknowledged", "Mr. Darcy", "She was"]
    samples = [sample(shipped, tok, p, seed=i) for i, p in enumerate(prompts)]
    prov = {
        "name": "austen-5m",
        "data": "Jane Austen's six novels from Debian package r-cran-janeaustenr (public domain), "
                "decoded with PyPI rdata; paragraphs joined; last 5% of each novel's paragraphs held out",
        "script": "tools/pretrain.py", "commands": [
            "python tools/pretrain.py data", "python tools/pretrain.py tokenizer",
            "python tools/pretrain.py train --minutes M  (repeat until it stops at the schedule's end; it resumes)",
            "python tools/pretrain.py export"],
        "seed": SEED, "model": MODEL, "train": TRAIN, "steps_done": ck["step"], "weights": weights,
        "parameters": sum(p.numel() for p in shipped.parameters()),
        "train_tokens": int(len(train_ids)), "val_tokens": int(len(val_ids)),
        "val_loss_f32": val_f32, "val_loss_f16": val_f16, "val_ppl_f16": math.exp(val_f16),
        "unigram_val_loss": unigram_loss(train_ids, val_ids),
        "uniform_val_loss": math.log(VOCAB),
        "history": ck["history"], "samples": dict(zip(prompts, samples)),
        "torch": torch.__version__,
    }
    json.dump(prov, open(os.path.join(OUT, "provenance.json"), "w"), indent=1)
    write_golden(shipped, tok)
    print(json.dumps({k: v for k, v in prov.items() if k != "history"}, indent=1))


def write_golden(model, tok):
    """Golden data for tests/default_model.rs: transformers' loss on held-out text with `loratab
    eval`'s definition (consecutive chunks of 128 tokens, each scored on its own, mean over every
    predicted position) and the tokenizer's ids, so the Rust loader, tokenizer and GPU forward are
    checked against the reference on the model as shipped."""
    import torch
    text = open(os.path.join(WORK, "val.txt")).read()[:3000]
    text = text[: text.rfind(" ")]
    ids = tok.encode(text).ids
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), 128):
            chunk = ids[start:start + 128]
            if len(chunk) < 2:
                continue
            x = torch.tensor([chunk])
            logits = model(input_ids=x).logits[0, :-1].double()
            total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
            count += len(chunk) - 1
    folder = os.path.join(ROOT, "tests", "fixtures", "default-model")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "heldout.txt"), "w").write(text)
    json.dump({"seq_len": 128, "loss": total / count, "tokens": count, "ids": ids},
              open(os.path.join(folder, "golden.json"), "w"))
    print("golden held-out loss", total / count, "over", count, "tokens")


def main():
    global WORK
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=WORK, help="working folder (data, tokenizer, checkpoint)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("data")
    sub.add_parser("tokenizer")
    tr = sub.add_parser("train")
    tr.add_argument("--minutes", type=float, default=60)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--until", type=int, help="stop at this step (default: the schedule's end)")
    sub.add_parser("export")
    args = ap.parse_args()
    WORK = args.work
    {"data": cmd_data, "tokenizer": cmd_tokenizer, "train": cmd_train, "export": cmd_export}[args.cmd](args)


if __name__ == "__main__":
    main()
