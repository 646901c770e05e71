#!/usr/bin/env python3
"""Continue a loratab run in PyTorch with TRL's SFTTrainer + PEFT (pip install trl peft).

    python train_trl.py [--steps N] [--out DIR]

Beside this script: train.jsonl / validation.jsonl (the run's examples and held-out split, in TRL's
formats), order.json (the example of every window loratab's sampler draws, batch after batch) and
adapter/ (the adapter the run starts from). It trains with loratab's chat template, masking, LoRA
settings, schedule, batch, sequence length and seed, prints the first step's loss (equal to
loratab's first step), the validation loss at the end, and saves the adapter to --out.

Why it tokenizes itself: TRL's `completion_only_loss` masks a prompt by its token count and
`assistant_only_loss` needs `{% generation %}` markers in the template. Here every record is
rendered once with the template, each assistant message's span is found by rendering the messages
before it (with the generation prompt) and through it, and a token is learnt if its characters
overlap a span (the answer and what closes it, so the model learns to stop), exactly as loratab
does. SFTTrainer takes the resulting `input_ids` + `labels` as they are. To let TRL tokenize
instead, pass `load_dataset("json", data_files="train.jsonl")["train"]` with
`completion_only_loss=True` and set the tokenizer's `chat_template` to CHAT_TEMPLATE.
"""

import argparse
import json
import math
import os

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, set_seed
from transformers.utils.chat_template_utils import _compile_jinja_template
from trl import SFTConfig, SFTTrainer

# <settings>

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.exists(os.path.join(HERE, BASE_MODEL)):  # a model shipped inside the export (base/)
    BASE_MODEL = os.path.join(HERE, BASE_MODEL)


def from_base(kind, **kwargs):
    """Load from BASE_MODEL: a folder or Hub id, or a .gguf file (dequantized by transformers)."""
    if BASE_MODEL.endswith(".gguf"):
        return kind.from_pretrained(os.path.dirname(BASE_MODEL) or ".", gguf_file=os.path.basename(BASE_MODEL), **kwargs)
    return kind.from_pretrained(BASE_MODEL, **kwargs)


def load_tokenizer():
    try:
        tok = from_base(AutoTokenizer)
    except (OSError, ValueError):  # a folder with tokenizer.json only
        tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(BASE_MODEL, "tokenizer.json"))
    if EOS_TOKEN is not None:
        tok.eos_token = EOS_TOKEN
    if tok.pad_token is None:  # padding is never learnt nor attended to
        tok.pad_token = tok.eos_token or tok.convert_ids_to_tokens(0)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def load_model():
    config = from_base(AutoConfig)
    # loratab never drops activations in the frozen network: only the adapter's own dropout remains.
    for key, value in vars(config).items():
        if isinstance(value, float) and (key.endswith("dropout") or key.endswith("pdrop")):
            setattr(config, key, 0.0)
    model = from_base(AutoModelForCausalLM, config=config, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, os.path.join(HERE, "adapter"), is_trainable=True)
    for name, p in model.named_parameters():  # B rows loratab keeps at zero get no gradient
        for module, start, end in FROZEN_ROWS:
            if f".{module}.lora_B." in name:
                mask = torch.ones_like(p)
                mask[start:end] = 0
                p.register_hook(lambda g, mask=mask: g * mask)
    return model


class Encoder:
    """One record → (input_ids, labels), as loratab's ChatTemplate::example."""

    def __init__(self, tok):
        self.template = _compile_jinja_template(CHAT_TEMPLATE)  # transformers' Jinja environment
        self.tokens = {k: v for k, v in (("bos_token", BOS_TOKEN), ("eos_token", EOS_TOKEN)) if v is not None}
        # The text tokenized with nothing added and untrimmed offsets (no post-processor).
        self.backend = type(tok.backend_tokenizer).from_str(tok.backend_tokenizer.to_str())
        self.backend.post_processor = None
        self.eos_id = None if EOS_TOKEN is None else tok.convert_tokens_to_ids(EOS_TOKEN)

    def render(self, messages, add_generation_prompt):
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.tokens)

    def __call__(self, record):
        if "text" in record:  # a document: every token learnt, EOS after it
            ids = self.backend.encode(record["text"], add_special_tokens=False).ids
            ids = ids + ([] if self.eos_id is None else [self.eos_id])
            return ids[:SEQ_LEN], ids[:SEQ_LEN]
        messages = record.get("messages") or record["prompt"] + record["completion"]
        full = self.render(messages, False)
        spans = []
        for i, m in enumerate(messages):
            if m["role"] == "assistant":
                before, through = self.render(messages[:i], True), self.render(messages[: i + 1], False)
                assert through.startswith(before) and full.startswith(through), f"message {i + 1}: not a prefix"
                spans.append((len(before), len(through)))
        enc = self.backend.encode(full, add_special_tokens=False)
        learnt = [any(s < b and e > a for a, b in spans) for s, e in enc.offsets]
        labels = [t if (keep or not ANSWERS_ONLY) else -100 for t, keep in zip(enc.ids, learnt)]
        return enc.ids[:SEQ_LEN], labels[:SEQ_LEN]


def read_jsonl(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def lr_at(step):
    """loratab's schedule at optimizer step `step` (from 1): warmup reaches the peak at its last step."""
    s = step - 1
    if s < WARMUP:
        return LR * (s + 1) / WARMUP
    p = min(1.0, (s - WARMUP) / max(1, STEPS - WARMUP))
    return LR * {"cosine": 0.5 * (1 + math.cos(math.pi * p)), "linear": 1 - p, "constant": 1.0}[DECAY]


class LoggingTrainer(SFTTrainer):
    """Prints the first optimizer step's loss (mean of its micro-batches) at full precision."""

    first = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training and len(self.first) < GRAD_ACCUM:
            self.first.append((out[0] if return_outputs else out).item())
            if len(self.first) == GRAD_ACCUM:
                print(f"first loss {sum(self.first) / GRAD_ACCUM:.6f}", flush=True)
        return out


def validation_loss(model, examples):
    """Mean loss over the held-out examples' learnt positions (loratab's validation loss)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, labels in examples:
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].double().cpu()
            target = torch.tensor(labels[1:])
            keep = target != -100
            if keep.any():
                total += torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum").item()
                count += int(keep.sum())
    return total / max(count, 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="stop after this many steps (the schedule stays the run's)")
    parser.add_argument("--out", default=os.path.join(HERE, "trl-adapter"))
    args = parser.parse_args()
    set_seed(SEED)
    tok = load_tokenizer()
    encode = Encoder(tok)
    train = [encode(r) for r in read_jsonl("train.jsonl")]
    with open(os.path.join(HERE, "order.json")) as f:
        order = json.load(f)[: args.steps * GRAD_ACCUM * BATCH]
    dataset = Dataset.from_list([{"input_ids": train[i][0], "labels": train[i][1]} for i in order])
    model = load_model()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_at(i + 1) / LR)
    config = SFTConfig(
        output_dir=os.path.join(HERE, "trl-output"),
        max_steps=args.steps,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=GRAD_ACCUM,
        max_length=SEQ_LEN,
        max_grad_norm=MAX_GRAD_NORM,
        train_sampling_strategy="sequential",  # order.json is already loratab's shuffle
        seed=SEED,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = LoggingTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok, optimizers=(optimizer, schedule))
    trainer.model_accepts_loss_kwargs = False  # each micro-batch's mean weighs equally, as in loratab
    trainer.train()
    held = [encode(r) for r in read_jsonl("validation.jsonl")]
    print(f"validation loss {validation_loss(model, held):.6f}", flush=True)
    model.save_pretrained(args.out)
    print(f"adapter saved to {args.out}")


if __name__ == "__main__":
    main()
