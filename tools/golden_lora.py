#!/usr/bin/env python3
"""Generate golden reference fixtures for loratab's LoRA support (PEFT as the reference).

What it produces (under tests/fixtures/lora/<case>/, relative to the repo root):

  adapter/adapter_model.safetensors   exactly what PEFT's `PeftModel.save_pretrained` writes
  adapter/adapter_config.json         (plus PEFT's auto-generated adapter/README.md model card)
  merged/                             base + INITIAL adapter merged (`merge_and_unload()`),
                                      written by `save_pretrained` (config.json,
                                      model.safetensors, generation_config.json) plus a
                                      copy of the base model's tokenizer.json
  golden.safetensors                  reference tensors (see below)
  golden.json                         reference scalars (see below)

Cases (base models are the random tiny fixtures made by tools/golden_forward.py, loaded
with AutoModelForCausalLM.from_pretrained(tests/fixtures/<base>, dtype=float32,
attn_implementation="eager") and put in eval mode, so dropout is off; lora_dropout=0,
bias="none", all other LoraConfig fields at their PEFT defaults):

  gpt2-cattn        base gpt2-tiny,  r=4, lora_alpha=8,
                    target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True
                    ("c_proj" matches both attn.c_proj and mlp.c_proj; GPT-2 uses
                    Conv1D layers whose weight is stored [in, out]).
  llama-qv          base llama-tiny, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"].
  llama-all-rslora  base llama-tiny, r=4, lora_alpha=16, use_rslora=True,
                    target_modules=[q,k,v,o,gate,up,down]_proj,
                    rank_pattern={"gate_proj": 2}, alpha_pattern={"down_proj": 4}.
  qwen2-qv          base qwen2-tiny (f16 on disk, loaded as float32), r=2, lora_alpha=4,
                    target_modules=["q_proj", "v_proj"].
  gguf-q            base tests/fixtures/gguf/tiny.gguf (tools/golden_gguf.py: Q8_0, Q4_0, Q4_1,
                    F16, BF16 and F32 tensors) as transformers' GGUF loader dequantizes it:
                    AutoModelForCausalLM.from_pretrained("tests/fixtures/gguf",
                    gguf_file="tiny.gguf", dtype=float32) (q/k rows un-permuted from llama.cpp's
                    layout, tensors named as in a transformers checkpoint), r=4, lora_alpha=8,
                    target_modules=[q,k,v,o,gate,up,down]_proj, so linears stored as each of
                    Q8_0, Q4_0, Q4_1, F16 and BF16 are adapted (golden.json "base_types" lists the
                    GGUF type of every adapted linear; the script asserts all five occur).
                    Tokens come from golden_gguf.build_tokenizer(), the tokenizer the GGUF's
                    vocabulary was trained as (asserted equal to the GGUF's token list).
  llama-bf16        base built here into tests/fixtures/lora/llama-bf16/base/: a random
                    LlamaForCausalLM whose linear dimensions are all multiples of 32: the
                    config.json of tests/fixtures/llama-tiny with hidden_size=64,
                    intermediate_size=128, 4 heads, 2 kv heads, head_dim 16 (so 2 layers,
                    vocab 300 = the shared tokenizer of tools/golden_forward.py, whose
                    tokenizer.json is copied in), untied LM head; torch.manual_seed(0), then
                    golden_forward.perturb_1d_params (norm weights 1 + 0.1 N(0,1)); saved with
                    save_pretrained in bfloat16 and loaded back as float32 (1.1e5 parameters,
                    base/model.safetensors 227 KB).
                    r=4, lora_alpha=8, target_modules=[q,k,v,o,gate,up,down]_proj.
  llama-f16         the same base with a tied LM head, saved in float16
                    (tests/fixtures/lora/llama-f16/base/, 189 KB); same LoRA settings.
  All with task_type="CAUSAL_LM".
  gguf-q, llama-bf16 and llama-f16 are the goldens for keeping frozen weights compact on the
  GPU: their losses and gradients are those of the DEQUANTIZED (f32) model. They have no
  merged/ folder (see below) and their golden.json "base" is the folder path under
  tests/fixtures (e.g. "gguf", "lora/llama-bf16/base"), with "gguf_file" for gguf-q.

LoRA definition (PEFT): for a targeted linear y = x W^T + b (W: [out, in]) the adapted
layer computes y = x W^T + b + scaling * (x A^T) B^T with A = lora_A.weight [r, in],
B = lora_B.weight [out, r], scaling = lora_alpha / r, or lora_alpha / sqrt(r) with
use_rslora (per-module r / alpha from rank_pattern / alpha_pattern). For GPT-2 Conv1D
(fan_in_fan_out=True) the base weight is stored transposed ([in, out]) but A and B have
the same [r, in] / [out, r] shapes as for nn.Linear. golden.json lists the per-module
r, alpha and scaling PEFT actually used.

Initialisation (deterministic): torch.manual_seed(0) immediately before
get_peft_model(), so A gets PEFT's default init (kaiming-uniform, a=sqrt(5)). PEFT
initialises every B to zero, which would make all gradients of A zero; therefore EVERY
lora_B weight is then overwritten with 0.1 * N(0, 1) drawn from a torch.Generator
seeded with 1, visiting the lora_B parameters in named_parameters() order. A is kept as
PEFT initialised it. This (A, randomized B) state is "the initial adapter"; it is what
adapter/ holds.

Batch: ids = tokenizer.encode(contents of tests/fixtures/eval.txt, no special tokens)
using the base model's tokenizer.json; tokens = int64 [2, 16] with rows ids[0:16] and
ids[40:56].

golden.safetensors:
  tokens                 int64 [2, 16]   the batch
  loss                   f32 []          model(tokens, labels=tokens).loss of the initial
                                         adapter model = mean next-token cross entropy
                                         over the 2*15 predicted positions
  grad.<name>            f32             d loss / d <name> for every LoRA parameter, from a
                                         single loss.backward(); <name> is exactly the key
                                         PEFT uses in adapter/adapter_model.safetensors,
                                         e.g. base_model.model.model.layers.0.self_attn.
                                         q_proj.lora_A.weight (PEFT's in-memory names
                                         carry an extra ".default" adapter segment, which
                                         the saved keys drop).
  step1.loss, step2.loss, step3.loss   f32 []   AdamW trajectory: the initial adapter is
                                         reloaded from adapter/ (PeftModel.from_pretrained(
                                         fresh base, adapter/, is_trainable=True)) and
                                         optimised with torch.optim.AdamW(lora params in
                                         named_parameters() order, lr=1e-2,
                                         betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
                                         for 3 steps on the same batch. step{k}.loss is the
                                         loss computed before step k (step1.loss == loss).
                                         torch AdamW per step t (1-based), per element:
                                           p <- p * (1 - lr*wd)
                                           m <- b1*m + (1-b1)*g ; v <- b2*v + (1-b2)*g^2
                                           p <- p - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps)
                                         (weight decay applies to all LoRA params, A and B).
  final.<name>           f32             every LoRA parameter after the 3rd step
  final_loss             f32 []          loss on the batch after the 3 steps

golden.json:
  case, base (base fixture folder name), r, lora_alpha, use_rslora, target_modules,
  rank_pattern, alpha_pattern, fan_in_fan_out,
  loss, step_losses [step1..3], final_loss (as in golden.safetensors),
  merged_loss: loss on the batch of merged/ reloaded with AutoModelForCausalLM (asserted
               equal to `loss` within 1e-6); for cases without merged/, the loss of the
               in-memory merge_and_unload() model,
  gguf-q only: gguf_file, and base_types {adapted module path: GGUF type of its base weight},
  llama-bf16 / llama-f16 only: base_dtype (storage dtype of base/model.safetensors) and
               tie_word_embeddings,
  eval_loss_64, eval_tokens_64: the initial adapter model scored with the eval
               definition of tools/golden_forward.py: eval.txt ids cut into consecutive
               chunks of 64 tokens (last shorter chunk counted if >= 2 tokens), each
               chunk scored separately, eval_loss_64 = total summed CE / total number of
               predicted positions (= eval_tokens_64),
  modules: {module path: {"r", "alpha", "scaling"}} as used by PEFT,
  batch_offsets, batch_seq_len, optimizer settings, library versions.

merged/ is saved in float32 for every case that has one (including qwen2-qv, whose base
is f16 on disk), since the merged weights W + scaling * B A are float32. gguf-q,
llama-bf16 and llama-f16 skip it (merge_and_unload is still checked in memory; the
fixtures stay small and their base is not a plain f32 folder).

Verification (asserts): adapter/ keys == the grad./final. names; the saved adapter
tensors equal the in-memory initial adapter; PeftModel.from_pretrained(base, adapter/)
reproduces `loss` (|diff| < 1e-6); merged/ reloaded reproduces `loss` (|diff| < 1e-6);
the step-1 loss of the trajectory equals `loss`; the gradients of the reloaded model
equal the recorded ones.

How to run (from the repo root; exact versions in tools/requirements-golden.txt, which
now includes peft):
  .venv-golden/bin/python tools/golden_lora.py [case ...]
The script is deterministic (fixed seeds, single CPU thread,
torch.use_deterministic_algorithms) and regenerates the named cases' folders under
tests/fixtures/lora/ from scratch (all cases when none is named; that also deletes the
dropout.safetensors files of tools/golden_dropout.py, which must then be rerun). Another
CPU may round differently in the last float bit (the same torch build gave ~1e-7
different losses on another machine), so regenerate only the cases you change.
It re-executes itself with PYTHONHASHSEED=0 because PEFT writes the target_modules set
into adapter_config.json in hash order, and it loads the bases through the relative path
tests/fixtures/<base> so adapter_config.json's base_model_name_or_path (and the PEFT
model card adapter/README.md) carry no machine-specific path.
It requires the base fixtures of tools/golden_forward.py and tools/golden_gguf.py to exist
(it does not regenerate them; it does rebuild the bases of llama-bf16 and llama-f16).
"""

import copy
import json
import math
import os
import shutil
import sys

import gguf
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

import peft
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_gguf  # noqa: E402
from golden_forward import perturb_1d_params  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
FIXTURES_REL = os.path.join("tests", "fixtures")
OUT_ROOT = os.path.join(FIXTURES, "lora")

BATCH_OFFSETS = [0, 40]
BATCH_SEQ_LEN = 16
EVAL_SEQ_LEN = 64
ADAMW = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
NUM_STEPS = 3
B_SEED = 1
B_STD = 0.1

LLAMA_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

CASES = [
    dict(
        case="gpt2-cattn",
        base="gpt2-tiny",
        lora=dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True),
    ),
    dict(
        case="llama-qv",
        base="llama-tiny",
        lora=dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    ),
    dict(
        case="llama-all-rslora",
        base="llama-tiny",
        lora=dict(
            r=4,
            lora_alpha=16,
            use_rslora=True,
            target_modules=LLAMA_ALL,
            rank_pattern={"gate_proj": 2},
            alpha_pattern={"down_proj": 4},
        ),
    ),
    dict(
        case="qwen2-qv",
        base="qwen2-tiny",
        lora=dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
    ),
]

# The compact-base cases: every llama projection adapted, no merged/ (see the docstring).
COMPACT_LORA = dict(r=4, lora_alpha=8, target_modules=LLAMA_ALL)
CASES.append(dict(case="gguf-q", base="gguf", gguf_file="tiny.gguf", merged=False, lora=COMPACT_LORA))
for _name, _dtype, _tied in [("llama-bf16", torch.bfloat16, False), ("llama-f16", torch.float16, True)]:
    CASES.append(dict(case=_name, base=f"lora/{_name}/base", build=dict(dtype=_dtype, tie_word_embeddings=_tied),
                      merged=False, lora=COMPACT_LORA))

# The base built for llama-bf16 / llama-f16: llama-tiny's config.json with every linear
# dimension a multiple of 32.
COMPACT_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16)

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def load_base(base: str, gguf_file=None):
    # Relative path (cwd is the repo root, see main()) so that the adapter_config.json
    # field base_model_name_or_path reads "tests/fixtures/<base>", not a machine path.
    extra = dict(gguf_file=gguf_file) if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        os.path.join(FIXTURES_REL, base), dtype=torch.float32, attn_implementation="eager", **extra
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())
    return model.eval()


def saved_name(peft_param_name: str) -> str:
    """In-memory PEFT name -> key used in adapter_model.safetensors (drops '.default')."""
    assert ".default." in peft_param_name, peft_param_name
    return peft_param_name.replace(".default.", ".")


def lora_params(model):
    """[(saved key, parameter)] for every LoRA parameter, in named_parameters() order."""
    out = [(saved_name(n), p) for n, p in model.named_parameters() if "lora_" in n]
    assert out and all(p.requires_grad for _, p in out)
    return out


def batch_loss(model, tokens):
    return model(tokens, labels=tokens, use_cache=False).loss


@torch.no_grad()
def chunked_eval_loss(model, ids, seq_len):
    total, count = 0.0, 0
    for start in range(0, len(ids), seq_len):
        chunk = ids[start:start + seq_len]
        if len(chunk) < 2:
            continue
        x = torch.tensor(chunk, dtype=torch.int64)[None]
        loss = model(x, labels=x, use_cache=False).loss
        total += float(loss) * (len(chunk) - 1)
        count += len(chunk) - 1
    return total / count, count


def module_info(model):
    """{module path (without base_model.model.): {r, alpha, scaling}} as PEFT set them."""
    from peft.tuners.lora import LoraLayer

    info = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LoraLayer):
            key = name.removeprefix("base_model.model.")
            info[key] = dict(
                r=int(mod.r["default"]),
                alpha=float(mod.lora_alpha["default"]),
                scaling=float(mod.scaling["default"]),
                base_layer=type(mod.get_base_layer()).__name__,
            )
    return info


def spec_base(spec):
    return load_base(spec["base"], spec.get("gguf_file"))


def build_base(spec) -> None:
    """Write the random llama base of llama-bf16 / llama-f16 (see the docstring)."""
    folder = os.path.join(FIXTURES, spec["base"])
    os.makedirs(folder)
    llama_tiny = os.path.join(FIXTURES, "llama-tiny")
    build = spec["build"]
    config = LlamaConfig.from_pretrained(
        llama_tiny, tie_word_embeddings=build["tie_word_embeddings"], attn_implementation="eager", **COMPACT_LLAMA
    )
    assert config.dtype in ("float32", torch.float32), config.dtype
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    perturb_1d_params(model)
    for name, p in model.named_parameters():
        if p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name:
            assert all(d % 32 == 0 for d in p.shape), (name, p.shape)
    model.eval().to(build["dtype"]).save_pretrained(folder)
    shutil.copyfile(os.path.join(llama_tiny, "tokenizer.json"), os.path.join(folder, "tokenizer.json"))
    stored = {v.dtype for v in load_file(os.path.join(folder, "model.safetensors")).values()}
    assert stored == {build["dtype"]}, stored


def gguf_linear_types(mods):
    """{module path: GGUF storage type} for every adapted linear of gguf-q."""
    out = {}
    for path in mods:
        gname = golden_gguf.gguf_name(path + ".weight")
        out[path] = golden_gguf.TYPES.get(gname, golden_gguf.Q.F32).name
    kinds = set(out.values())
    assert {"Q8_0", "Q4_0", "Q4_1", "F16", "BF16"} <= kinds, kinds
    return out


def eval_ids(spec, text):
    """ids of `text` under the base's tokenizer (for gguf-q: the GGUF's source tokenizer)."""
    if spec.get("gguf_file"):
        tok = golden_gguf.build_tokenizer()
        reader = gguf.GGUFReader(os.path.join(FIXTURES, spec["base"], spec["gguf_file"]))
        field = reader.fields["tokenizer.ggml.tokens"]
        tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        vocab = tok.get_vocab()
        assert tokens == sorted(vocab, key=vocab.get), "the GGUF was not written with this tokenizer"
    else:
        tok = Tokenizer.from_file(os.path.join(FIXTURES, spec["base"], "tokenizer.json"))
    return tok.encode(text, add_special_tokens=False).ids


def make_peft_model(spec):
    base = spec_base(spec)
    cfg = LoraConfig(task_type="CAUSAL_LM", lora_dropout=0.0, bias="none", **spec["lora"])
    torch.manual_seed(0)
    model = get_peft_model(base, cfg)
    gen = torch.Generator().manual_seed(B_SEED)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(B_STD * torch.randn(p.shape, generator=gen, dtype=torch.float32))
    model.eval()
    return model


# ---------------------------------------------------------------------------
# One case
# ---------------------------------------------------------------------------

def run_case(spec, eval_text):
    case, base = spec["case"], spec["base"]
    folder = os.path.join(OUT_ROOT, case)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    adapter_dir = os.path.join(folder, "adapter")
    merged_dir = os.path.join(folder, "merged")
    if "build" in spec:
        build_base(spec)

    ids = eval_ids(spec, eval_text)
    assert max(BATCH_OFFSETS) + BATCH_SEQ_LEN <= len(ids)
    tokens = torch.tensor([ids[o:o + BATCH_SEQ_LEN] for o in BATCH_OFFSETS], dtype=torch.int64)

    # ---- initial adapter, loss + gradients ----
    model = make_peft_model(spec)
    params = lora_params(model)
    initial = {k: p.detach().clone() for k, p in params}
    for k, p in params:
        if ".lora_A." in k:
            assert p.abs().sum() > 0, k
    model.zero_grad(set_to_none=True)
    loss = batch_loss(model, tokens)
    loss.backward()
    grads = {}
    for k, p in params:
        assert p.grad is not None, k
        grads[k] = p.grad.detach().clone().contiguous()
        assert grads[k].abs().max() > 0, f"{case}: zero gradient for {k}"
    model.zero_grad(set_to_none=True)
    loss_val = float(loss.detach())
    # Independent check of the loss definition (mean over 2*15 positions).
    with torch.no_grad():
        logits = model(tokens, use_cache=False).logits
        ref = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).double(), tokens[:, 1:].reshape(-1)
        )
    assert abs(float(ref) - loss_val) < 1e-5, (float(ref), loss_val)

    mods = module_info(model)
    eval64, n64 = chunked_eval_loss(model, ids, EVAL_SEQ_LEN)

    # ---- adapter/ as PEFT writes it ----
    model.save_pretrained(adapter_dir)
    saved = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    assert set(saved) == set(initial), (sorted(saved), sorted(initial))
    for k, v in saved.items():
        assert torch.equal(v, initial[k]), k

    # ---- merged/ (from a copy of the initial adapter model) ----
    merged = copy.deepcopy(model).merge_and_unload()
    merged.eval()
    with torch.no_grad():
        merged_mem_loss = float(batch_loss(merged, tokens))
    assert abs(merged_mem_loss - loss_val) < 1e-6, (merged_mem_loss, loss_val)
    merged_loss = merged_mem_loss
    if spec.get("merged", True):
        merged.save_pretrained(merged_dir)
        shutil.copyfile(os.path.join(FIXTURES, base, "tokenizer.json"), os.path.join(merged_dir, "tokenizer.json"))
        merged_re = load_base(os.path.relpath(merged_dir, FIXTURES))
        with torch.no_grad():
            merged_loss = float(batch_loss(merged_re, tokens))
        assert abs(merged_loss - loss_val) < 1e-6, (merged_loss, loss_val)
        del merged_re
    del merged

    # ---- reload check: PeftModel.from_pretrained(base, adapter/) ----
    reloaded = PeftModel.from_pretrained(spec_base(spec), adapter_dir).eval()
    with torch.no_grad():
        reload_loss = float(batch_loss(reloaded, tokens))
    assert abs(reload_loss - loss_val) < 1e-6, (reload_loss, loss_val)
    assert module_info(reloaded) == mods
    del reloaded

    # ---- AdamW trajectory from a fresh reload of the initial adapter ----
    traj = PeftModel.from_pretrained(spec_base(spec), adapter_dir, is_trainable=True).eval()
    tparams = lora_params(traj)
    assert [k for k, _ in tparams] == [k for k, _ in params]
    for k, p in tparams:
        assert torch.equal(p.detach(), initial[k]), k
    assert all(not p.requires_grad for n, p in traj.named_parameters() if "lora_" not in n)
    opt = torch.optim.AdamW([p for _, p in tparams], **ADAMW)
    step_losses = []
    for step in range(1, NUM_STEPS + 1):
        opt.zero_grad(set_to_none=True)
        l = batch_loss(traj, tokens)
        l.backward()
        if step == 1:
            for k, p in tparams:
                diff = (p.grad - grads[k]).abs().max().item()
                assert diff < 1e-6 * max(1.0, grads[k].abs().max().item()), (k, diff)
        opt.step()
        step_losses.append(float(l.detach()))
    assert abs(step_losses[0] - loss_val) < 1e-6, (step_losses[0], loss_val)
    with torch.no_grad():
        final_loss = float(batch_loss(traj, tokens))
    final = {k: p.detach().clone().contiguous() for k, p in tparams}
    assert final_loss < step_losses[0], f"{case}: AdamW did not reduce the loss"
    del traj

    # ---- write goldens ----
    tensors = {
        "tokens": tokens.contiguous(),
        "loss": torch.tensor(loss_val, dtype=torch.float32),
        "final_loss": torch.tensor(final_loss, dtype=torch.float32),
    }
    for k, v in enumerate(step_losses, start=1):
        tensors[f"step{k}.loss"] = torch.tensor(v, dtype=torch.float32)
    for k, v in grads.items():
        tensors[f"grad.{k}"] = v
    for k, v in final.items():
        tensors[f"final.{k}"] = v
    save_file(tensors, os.path.join(folder, "golden.safetensors"))

    lcfg = spec["lora"]
    info = {
        "case": case,
        "base": base,
        **({"gguf_file": spec["gguf_file"], "base_types": gguf_linear_types(mods)} if spec.get("gguf_file") else {}),
        **({"base_dtype": str(spec["build"]["dtype"]).removeprefix("torch."),
            "tie_word_embeddings": spec["build"]["tie_word_embeddings"]} if "build" in spec else {}),
        "r": lcfg["r"],
        "lora_alpha": lcfg["lora_alpha"],
        "use_rslora": bool(lcfg.get("use_rslora", False)),
        "target_modules": lcfg["target_modules"],
        "rank_pattern": lcfg.get("rank_pattern", {}),
        "alpha_pattern": lcfg.get("alpha_pattern", {}),
        "fan_in_fan_out": bool(lcfg.get("fan_in_fan_out", False)),
        "loss": loss_val,
        "step_losses": step_losses,
        "final_loss": final_loss,
        "merged_loss": merged_loss,
        "eval_loss_64": eval64,
        "eval_tokens_64": n64,
        "batch_offsets": BATCH_OFFSETS,
        "batch_seq_len": BATCH_SEQ_LEN,
        "lora_b_init": f"{B_STD} * randn, torch.Generator seeded {B_SEED}, lora_B params in named_parameters() order",
        "optimizer": dict(name="torch.optim.AdamW", lr=ADAMW["lr"], betas=list(ADAMW["betas"]),
                          eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"], steps=NUM_STEPS),
        "modules": mods,
        "versions": dict(torch=torch.__version__, transformers=transformers.__version__,
                         peft=peft.__version__),
    }
    with open(os.path.join(folder, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")

    size = sum(os.path.getsize(os.path.join(d, fn)) for d, _, fns in os.walk(folder) for fn in fns)
    assert size < 1_000_000, f"{case}: folder too large ({size} bytes)"
    print(
        f"{case:18s} loss={loss_val:.6f} merged={merged_loss:.6f} reload={reload_loss:.6f} "
        f"steps={[round(x, 6) for x in step_losses]} final={final_loss:.6f} "
        f"eval@64={eval64:.6f} ({n64} tok) lora_tensors={len(initial)} size={size}B"
    )


def main() -> int:
    # PEFT stores target_modules as a Python set and writes it to adapter_config.json in
    # set iteration order, which depends on string hash randomisation. Re-run ourselves
    # with a fixed PYTHONHASHSEED so adapter_config.json is byte-for-byte reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT_ROOT, exist_ok=True)
    with open(os.path.join(FIXTURES, "eval.txt"), "r", encoding="utf-8", newline="") as f:
        eval_text = f.read()
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}")
    names = [spec["case"] for spec in CASES]
    unknown = [n for n in sys.argv[1:] if n not in names]
    assert not unknown, f"unknown cases {unknown}; the cases are {names}"
    for spec in CASES:
        if not sys.argv[1:] or spec["case"] in sys.argv[1:]:
            run_case(spec, eval_text)
    print("all LoRA fixtures written and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
