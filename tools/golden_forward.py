#!/usr/bin/env python3
"""Generate golden reference fixtures for loratab's forward pass / loss / generation.

What it produces (all under tests/fixtures/, relative to the repo root):

  tests/fixtures/eval.txt                   ~600-char English paragraph used for eval loss
  tests/fixtures/gpt2-tiny/                 GPT2LMHeadModel, f32, tied LM head
  tests/fixtures/llama-tiny/                LlamaForCausalLM, f32, untied LM head, GQA
  tests/fixtures/llama-tiny-tied-bf16/      LlamaForCausalLM, bf16 storage, tied LM head
  tests/fixtures/qwen2-tiny/                Qwen2ForCausalLM (q/k/v biases), f16 storage, untied

Each model folder holds exactly what Hugging Face `save_pretrained` writes
(config.json, model.safetensors, and generation_config.json when transformers
emits one) plus:
  tokenizer.json       one shared byte-level BPE tokenizer (vocab 300, trained here)
  golden.safetensors   reference tensors (see below)
  golden.json          reference scalars (see below)

Models (random init, torch.manual_seed(0) before building each model):
  gpt2-tiny:  n_layer=2, n_embd=36, n_head=3 (head_dim 12), n_positions=64,
              activation gelu_new, tied LM head, initializer_range=0.2.
  llama-tiny: num_hidden_layers=2, hidden_size=48, num_attention_heads=6,
              num_key_value_heads=2 (head_dim 8), intermediate_size=74,
              rms_norm_eps=1e-5, rope_theta=10000, max_position_embeddings=64,
              tie_word_embeddings=False, initializer_range=0.2, eager attention.
  llama-tiny-tied-bf16: as llama-tiny but tie_word_embeddings=True, stored in bfloat16.
  qwen2-tiny: Qwen2ForCausalLM with llama-tiny sizes (has q/k/v biases),
              untied, stored in float16.
  vocab_size = tokenizer vocab size (300) for all models.

  NOTE: transformers' default init sets every bias to 0 and every LayerNorm/RMSNorm
  weight to 1, which would leave bias/norm-weight handling untested. After the
  default init, every 1-D parameter is therefore deterministically perturbed
  (generator seeded with 1234, parameters visited in named_parameters() order):
  names ending in "bias" -> 0.1 * N(0,1), other 1-D params (norm weights) ->
  1 + 0.1 * N(0,1).

Golden definitions (all computed in float32 on CPU, model.eval(), eager attention,
from the weights exactly as stored on disk: bf16/f16 weights are loaded and cast
to float32 before running):
  golden.safetensors:
    tokens  int64 [23]    tokenizer.encode(text, add_special_tokens=False); `text`
                          (in golden.json) is a prefix of a fixed sentence chosen so
                          it encodes to exactly 23 tokens.
    logits  float32 [23, V]  model(tokens[None]).logits[0]
    loss    float32 []    model(tokens[None], labels=tokens[None]).loss
                          (= mean next-token cross entropy over 22 positions)
    prompt  int64 [5]     tokens[:5]
    greedy  int64 [12]    the 12 NEW tokens of model.generate(prompt[None],
                          max_new_tokens=12, do_sample=False, eos_token_id=None,
                          pad_token_id=0) (cross-checked against a manual
                          argmax loop with full re-forwarding, no KV cache).
  golden.json:
    text, loss (float of the above),
    seq_len_eval=8, eval_loss, eval_tokens, eval_loss_64, eval_tokens_64:
      ids = tokenizer.encode(contents of tests/fixtures/eval.txt, no special tokens);
      cut ids into consecutive chunks of seq_len tokens; the final shorter chunk
      counts if it has >= 2 tokens; each chunk is scored on its own:
      model(chunk, labels=chunk).loss is the mean over len(chunk)-1 predicted
      positions, converted to a sum by multiplying by len(chunk)-1;
      eval_loss = total summed CE / total predicted positions,
      eval_tokens = total predicted positions.
    plus informational keys (model_type, storage dtype, vocab_size, num_params, ...).

Tokenizer: byte-level BPE trained with `tokenizers` on the English text inline in
this file (ByteLevel pre-tokenizer with add_prefix_space=False, ByteLevel decoder,
ByteLevel post-processor with trim_offsets=False, vocab_size=300, initial alphabet =
all 256 byte symbols, one special token `<|endoftext|>`).

Verification: every folder is reloaded with
AutoModelForCausalLM.from_pretrained(folder, dtype=float32, attn_implementation="eager")
and its logits are asserted to match the recorded ones (max abs diff < 1e-6);
the tokenizer.json is reloaded and asserted to re-encode the text identically.

How to run (from the repo root; exact versions in tools/requirements-golden.txt):
  python3 -m venv .venv-golden
  .venv-golden/bin/pip install -r tools/requirements-golden.txt
  .venv-golden/bin/python tools/golden_forward.py
The script is deterministic (fixed seeds, single CPU thread) and regenerates
everything above from scratch.
"""

import json
import math
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")

SEQ_LEN = 23
PROMPT_LEN = 5
MAX_NEW_TOKENS = 12
EOT = "<|endoftext|>"

# ---------------------------------------------------------------------------
# Text (written for this script; no external data)
# ---------------------------------------------------------------------------

TRAIN_TEXT = """\
The river runs slowly past the old mill, and the children of the village come down
to the water every evening to watch the light fade behind the hills. Their parents
work in the fields during the day, planting wheat in the spring and bringing in the
harvest at the end of the summer. When the weather turns cold, the families gather
around the fire and tell stories about the winters of the past.

A small machine can learn to predict the next word in a sentence. It reads a long
sequence of tokens, computes a score for every word in its vocabulary, and chooses
the one that seems most likely. Training adjusts millions of numbers so that the
scores of the correct words grow larger over time. The process is simple to
describe, but it requires a great deal of careful engineering to make it fast.

In the morning the market opens early. Farmers bring baskets of apples, pears,
carrots and onions, and the baker sells warm bread from a wooden cart. People walk
between the stalls, talking with their neighbours and comparing the prices of the
things they need. By noon most of the food has been sold and the square is quiet
again, except for a few birds looking for crumbs on the stones.

The ship left the harbour before dawn. The captain stood on the deck and looked at
the dark water, thinking about the long journey ahead. There would be storms, and
there would be days without wind, but the crew was strong and the ship was well
built. After many weeks at sea they hoped to reach a new land where the forests
were green and the rivers were full of fish.

Mathematics is the study of patterns and structures. A number can describe the
size of a set, the length of a line, or the probability of an event. Equations
connect these numbers to one another, and proofs show that certain statements must
always be true. Many students find the subject difficult at first, but with time
and practice they discover that it has a beauty of its own.

The library was open late on Thursday. She found a quiet table near the window,
opened her notebook, and began to write. The words came slowly at first, then more
quickly, until the page was full. When she finally looked up, the sky outside was
dark and the street lamps were shining on the wet road. She packed her things,
thanked the librarian, and walked home through the rain.

Good software is written for people as much as for computers. Clear names, small
functions and honest tests make a program easier to read and safer to change. When
a bug appears, a simple test that reproduces it is worth more than a long
explanation. The best engineers are patient: they measure before they optimize,
and they check their results against a trusted reference.
"""

SENTENCE = (
    "The quick brown fox jumps over the lazy dog while the children laugh "
    "and the river runs past the old mill in the evening light."
)

EVAL_TEXT = (
    "Every autumn the birds gather on the roof of the church before they fly "
    "south for the winter. The old men of the town sit on a bench in the square "
    "and count them, arguing about whether there are more this year than last. "
    "Nobody knows exactly where the birds go, but everyone agrees that the town "
    "feels empty when they leave. In the spring they return, tired from the long "
    "journey, and build their nests under the eaves of the houses. The children "
    "watch the young birds learn to fly, and the farmers say that a good year "
    "always begins when the first swallow is seen above the fields near the river.\n"
)


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        min_frequency=2,
        show_progress=False,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAIN_TEXT.splitlines(keepends=True), trainer=trainer)
    return tok


def encode(tok: Tokenizer, text: str) -> list:
    return tok.encode(text, add_special_tokens=False).ids


def choose_text(tok: Tokenizer) -> str:
    """Longest prefix of SENTENCE that encodes to exactly SEQ_LEN tokens,
    preferring prefixes that end at a word boundary."""
    best, best_boundary = None, None
    for k in range(1, len(SENTENCE) + 1):
        prefix = SENTENCE[:k]
        if len(encode(tok, prefix)) == SEQ_LEN:
            best = prefix
            if k == len(SENTENCE) or SENTENCE[k] == " ":
                best_boundary = prefix
    text = best_boundary or best
    assert text is not None, "SENTENCE too short for SEQ_LEN tokens"
    return text


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------

def model_specs(vocab_size: int, eot_id: int):
    llama_kw = dict(
        vocab_size=vocab_size,
        hidden_size=48,
        intermediate_size=74,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        initializer_range=0.2,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        attn_implementation="eager",
        dtype="float32",
    )
    return [
        dict(
            name="gpt2-tiny",
            cls=GPT2LMHeadModel,
            config=GPT2Config(
                vocab_size=vocab_size,
                n_positions=64,
                n_embd=36,
                n_layer=2,
                n_head=3,
                activation_function="gelu_new",
                initializer_range=0.2,
                tie_word_embeddings=True,
                bos_token_id=eot_id,
                eos_token_id=eot_id,
                attn_implementation="eager",
                dtype="float32",
            ),
            store_dtype=torch.float32,
        ),
        dict(
            name="llama-tiny",
            cls=LlamaForCausalLM,
            config=LlamaConfig(tie_word_embeddings=False, **llama_kw),
            store_dtype=torch.float32,
        ),
        dict(
            name="llama-tiny-tied-bf16",
            cls=LlamaForCausalLM,
            config=LlamaConfig(tie_word_embeddings=True, **llama_kw),
            store_dtype=torch.bfloat16,
        ),
        dict(
            name="qwen2-tiny",
            cls=Qwen2ForCausalLM,
            config=Qwen2Config(tie_word_embeddings=False, **llama_kw),
            store_dtype=torch.float16,
        ),
    ]


@torch.no_grad()
def perturb_1d_params(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1234)
    for name, p in model.named_parameters():
        if p.ndim != 1:
            continue
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("bias"):
            p.copy_(0.1 * noise)
        else:
            p.copy_(1.0 + 0.1 * noise)


def load_reference_f32(cls, config, folder: str) -> torch.nn.Module:
    """Build a fresh f32 model and load the on-disk weights cast to f32."""
    model = cls(config).to(torch.float32)
    sd = {k: v.to(torch.float32) for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, f"unexpected keys: {unexpected}"
    allowed_missing = {"lm_head.weight"} if config.tie_word_embeddings else set()
    assert set(missing) <= allowed_missing, f"missing keys: {missing}"
    model.tie_weights()
    if config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.eval()
    return model


# ---------------------------------------------------------------------------
# Goldens
# ---------------------------------------------------------------------------

@torch.no_grad()
def greedy_generate(model, prompt: torch.Tensor) -> torch.Tensor:
    gen_cfg = GenerationConfig(
        max_new_tokens=MAX_NEW_TOKENS,
        min_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        num_beams=1,
        eos_token_id=None,
        bos_token_id=None,
        pad_token_id=0,
    )
    out = model.generate(
        prompt[None],
        attention_mask=torch.ones_like(prompt[None]),
        generation_config=gen_cfg,
    )[0]
    new = out[prompt.numel():]
    assert new.numel() == MAX_NEW_TOKENS, f"generation stopped early: {new.numel()}"
    # Cross-check with a manual argmax loop (full re-forward, no KV cache).
    seq = prompt.clone()
    for _ in range(MAX_NEW_TOKENS):
        logits = model(seq[None], use_cache=False).logits[0, -1]
        seq = torch.cat([seq, logits.argmax().reshape(1)])
    assert torch.equal(seq[prompt.numel():], new), "generate() disagrees with manual greedy loop"
    return new.to(torch.int64)


@torch.no_grad()
def chunked_eval_loss(model, ids: list, seq_len: int):
    total, count = 0.0, 0
    for start in range(0, len(ids), seq_len):
        chunk = ids[start:start + seq_len]
        if len(chunk) < 2:
            continue
        x = torch.tensor(chunk, dtype=torch.int64)[None]
        loss = model(x, labels=x).loss
        total += float(loss) * (len(chunk) - 1)
        count += len(chunk) - 1
    return total / count, count


@torch.no_grad()
def compute_goldens(model, tokens: torch.Tensor, eval_ids: list) -> dict:
    logits = model(tokens[None], use_cache=False).logits[0].to(torch.float32).contiguous()
    loss = model(tokens[None], labels=tokens[None], use_cache=False).loss.to(torch.float32)
    # Independent check of the loss definition.
    ref = torch.nn.functional.cross_entropy(logits[:-1].double(), tokens[1:])
    assert abs(float(ref) - float(loss)) < 1e-5, (float(ref), float(loss))
    prompt = tokens[:PROMPT_LEN].clone()
    greedy = greedy_generate(model, prompt)
    eval8, n8 = chunked_eval_loss(model, eval_ids, 8)
    eval64, n64 = chunked_eval_loss(model, eval_ids, 64)
    return dict(
        tensors=dict(
            tokens=tokens.clone().contiguous(),
            logits=logits,
            loss=loss.reshape(()).contiguous(),
            prompt=prompt.contiguous(),
            greedy=greedy.contiguous(),
        ),
        eval=dict(eval_loss=eval8, eval_tokens=n8, eval_loss_64=eval64, eval_tokens_64=n64),
    )


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(FIXTURES, exist_ok=True)

    tok = build_tokenizer()
    # Determinism check of tokenizer training.
    assert build_tokenizer().to_str() == tok.to_str(), "tokenizer training is not deterministic"
    vocab_size = tok.get_vocab_size()
    eot_id = tok.token_to_id(EOT)
    assert eot_id is not None

    text = choose_text(tok)
    token_ids = encode(tok, text)
    assert len(token_ids) == SEQ_LEN
    assert tok.decode(token_ids) == text, "tokenizer does not round-trip the text"
    tokens = torch.tensor(token_ids, dtype=torch.int64)

    eval_path = os.path.join(FIXTURES, "eval.txt")
    with open(eval_path, "w", encoding="utf-8", newline="\n") as f:
        f.write(EVAL_TEXT)
    with open(eval_path, "r", encoding="utf-8", newline="") as f:
        eval_ids = encode(tok, f.read())

    print(f"tokenizer: vocab_size={vocab_size} eot_id={eot_id}")
    print(f"text ({len(token_ids)} tokens): {text!r}")
    print(f"eval.txt: {len(EVAL_TEXT)} chars, {len(eval_ids)} tokens")

    for spec in model_specs(vocab_size, eot_id):
        name, cls, config, store_dtype = spec["name"], spec["cls"], spec["config"], spec["store_dtype"]
        folder = os.path.join(FIXTURES, name)
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        os.makedirs(folder)

        torch.manual_seed(0)
        model = cls(config).to(torch.float32)
        perturb_1d_params(model)
        model.eval()
        num_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
        model.to(store_dtype).save_pretrained(folder)
        del model
        tok.save(os.path.join(folder, "tokenizer.json"))

        # Goldens from the on-disk weights, cast to f32.
        ref = load_reference_f32(cls, config, folder)
        g = compute_goldens(ref, tokens, eval_ids)
        save_file(g["tensors"], os.path.join(folder, "golden.safetensors"))

        info = {
            "text": text,
            "loss": float(g["tensors"]["loss"]),
            "seq_len_eval": 8,
            "eval_loss": g["eval"]["eval_loss"],
            "eval_tokens": g["eval"]["eval_tokens"],
            "eval_loss_64": g["eval"]["eval_loss_64"],
            "eval_tokens_64": g["eval"]["eval_tokens_64"],
            "model_type": config.model_type,
            "storage_dtype": str(store_dtype).replace("torch.", ""),
            "vocab_size": vocab_size,
            "num_params": num_params,
            "eot_id": eot_id,
        }
        with open(os.path.join(folder, "golden.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
            f.write("\n")

        # ---- Verification: reload with AutoModelForCausalLM and compare ----
        auto = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager"
        ).eval()
        assert type(auto) is cls, type(auto)
        assert all(p.dtype == torch.float32 for p in auto.parameters())
        saved = load_file(os.path.join(folder, "golden.safetensors"))
        with torch.no_grad():
            logits = auto(saved["tokens"][None], use_cache=False).logits[0]
            loss = auto(saved["tokens"][None], labels=saved["tokens"][None], use_cache=False).loss
        diff = (logits - saved["logits"]).abs().max().item()
        assert diff < 1e-6, f"{name}: reloaded logits differ by {diff}"
        assert abs(float(loss) - float(saved["loss"])) < 1e-6
        assert torch.equal(saved["greedy"], greedy_generate(auto, saved["prompt"]))
        tok2 = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        assert encode(tok2, text) == token_ids

        lg = saved["logits"]
        assert lg.std().item() > 0.3, f"{name}: logits too flat (std {lg.std().item():.4f})"
        print(
            f"{name:22s} params={num_params:6d} store={info['storage_dtype']:8s} "
            f"loss={info['loss']:.6f} eval_loss@8={info['eval_loss']:.6f} ({info['eval_tokens']} tok) "
            f"eval_loss@64={info['eval_loss_64']:.6f} ({info['eval_tokens_64']} tok) "
            f"logits std={lg.std().item():.3f} reload max|diff|={diff:.2e}"
        )
        print(f"{'':22s} greedy={saved['greedy'].tolist()}")

    print("all fixtures written and verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
