#!/usr/bin/env python3
"""Golden loss and LoRA gradients WITH lora_dropout, PEFT as the reference.

A dropout mask is random, so PEFT and loratab can only agree if they drop the same elements. This
script replaces each PEFT LoRA layer's `lora_dropout` module with one that applies loratab's
deterministic mask (shaders/dropout.wgsl, reproduced here in numpy uint32 arithmetic):

    keep(i) = pcg(i ^ pcg(seed_m)) >= floor(p * 2^32),   out = x * keep / (1 - p)

over the module's input flattened row-major ([B*T, in]), with the per-module seed the trainer
uses for micro-batch 0 of step 0:  seed_m = pcg(pcg(pcg(SEED ^ 0) ^ 0) ^ m), m = the module's index
in name order. Everything else (the forward, the loss, autograd, scaling) is PEFT's own, so the
test checks loratab's masked forward and backward (dA through the mask, dx through the mask).

Inputs: the PEFT-saved adapters and golden batches of tools/golden_lora.py. Output:
tests/fixtures/lora/<case>/dropout.safetensors with `loss`, `p`, `seed` and `grad.<key>`.
Run from the repo root: python tools/golden_dropout.py
"""
import os
import sys

import numpy as np
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_lora import batch_loss, load_base, lora_params  # noqa: E402

P = 0.25
SEED = 7
CASES = [("llama-qv", "llama-tiny"), ("gpt2-cattn", "gpt2-tiny")]
M32 = np.uint64(0xFFFFFFFF)


def pcg(v):
    v = np.asarray(v, dtype=np.uint64)
    state = (v * np.uint64(747796405) + np.uint64(2891336453)) & M32
    word = (((state >> ((state >> np.uint64(28)) + np.uint64(4))) ^ state) * np.uint64(277803737)) & M32
    return ((word >> np.uint64(22)) ^ word) & M32


class HashDropout(torch.nn.Module):
    def __init__(self, p, seed):
        super().__init__()
        self.p, self.seed = p, seed

    def forward(self, x):
        n = x.numel()
        threshold = np.uint64(int(self.p * 2**32))
        keep = pcg(np.arange(n, dtype=np.uint64) ^ pcg(self.seed)) >= threshold
        scale = np.float32(1.0) / (np.float32(1.0) - np.float32(self.p))
        mask = torch.from_numpy(keep.astype(np.float32) * scale).reshape(x.shape)
        return x * mask


def main():
    from peft.tuners.lora import LoraLayer

    for case, base in CASES:
        folder = os.path.join("tests", "fixtures", "lora", case)
        tokens = load_file(os.path.join(folder, "golden.safetensors"))["tokens"].to(torch.int64)
        model = PeftModel.from_pretrained(load_base(base), os.path.join(folder, "adapter"), is_trainable=True).eval()
        layers = sorted((name.removeprefix("base_model.model."), mod)
                        for name, mod in model.named_modules() if isinstance(mod, LoraLayer))
        for m, (name, mod) in enumerate(layers):
            seed = int(pcg(pcg(pcg(SEED ^ 0) ^ 0) ^ m))
            mod.lora_dropout["default"] = HashDropout(P, seed)
        params = lora_params(model)
        loss = batch_loss(model, tokens)
        loss.backward()
        out = {"loss": loss.detach().reshape(1), "p": torch.tensor([P]), "seed": torch.tensor([float(SEED)])}
        for k, p in params:
            out[f"grad.{k}"] = p.grad.detach().clone().contiguous()
        # Without the mask the gradients differ: the fixture really tests dropout.
        plain = load_file(os.path.join(folder, "golden.safetensors"))
        k = params[0][0]
        assert not torch.allclose(out[f"grad.{k}"], plain[f"grad.{k}"], rtol=1e-2), k
        save_file(out, os.path.join(folder, "dropout.safetensors"))
        print(case, "loss", float(loss), "plain", float(plain["loss"]) if "loss" in plain else None)


if __name__ == "__main__":
    main()
