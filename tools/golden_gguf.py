#!/usr/bin/env python3
"""Golden data for `loratab import-gguf` (tests/gguf.rs).

Writes tests/fixtures/gguf/:
  tiny.gguf            a small llama GGUF (v3) built with llama.cpp's `gguf` package the way
                       convert_hf_to_gguf.py builds one: random LlamaForCausalLM weights (hidden 64,
                       2 layers, 4 heads, 2 kv heads, head_dim 16, ffn 128, untied output), q and k
                       rows permuted for llama.cpp's RoPE layout, tensors quantized with
                       gguf.quants to Q8_0, Q4_0, Q4_1, F16, BF16 and F32 (see TYPES), alignment 64
                       (not the default 32, so general.alignment is exercised), and a byte-level BPE
                       vocabulary (tokenizer.ggml.model gpt2, pre "smollm": digits split one by one,
                       as SmolLM2) trained here with `tokenizers`, with three control tokens.
  golden.safetensors   what transformers' own GGUF loader makes of tiny.gguf:
                         every state_dict tensor of AutoModelForCausalLM.from_pretrained(dir,
                         gguf_file=tiny.gguf) (dequantized by `gguf`, q/k un-permuted), f32;
                         tokens  int64  the source tokenizer's ids for SAMPLE (no special tokens);
                         loss    f32    mean next-token cross-entropy of that model on LOSS_TEXT's
                                        ids (one chunk).
  golden.json          the sample texts, their ids, the loss, and the config transformers built.

Oracles: weights and loss come from transformers' GGUF loader. Token ids come from the tokenizer
the vocabulary was trained as (what a model's own tokenizer.json would do); transformers' GGUF
tokenizer is checked against it on digit-free text only, because it ignores `tokenizer.ggml.pre`
"smollm" and so does not split digits.

Run from the repo root: .venv-golden/bin/python tools/golden_gguf.py (deterministic).
"""

import json
import os
import sys
import tempfile

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, TokenType, quants
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from golden_forward import EVAL_TEXT, TRAIN_TEXT  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "gguf")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
SAMPLE = "Naïve café, 2024 → 東京 🙂 costs $13.50!<|im_end|>\n  The river runs 42 miles."
NO_DIGITS = "Naïve café → 東京 🙂<|im_end|>\n  The river runs slowly past the mill."
LOSS_TEXT = EVAL_TEXT

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 64, 2, 4, 2, 128, 512
ROPE_THETA, EPS = 100000.0, 1e-5

# GGUF name → storage type. Every supported type appears on at least two tensors of different shapes.
TYPES = {
    "token_embd.weight": Q.Q8_0,
    "output.weight": Q.Q4_1,
    "output_norm.weight": Q.F32,
    "blk.0.attn_q.weight": Q.Q4_0,
    "blk.0.attn_k.weight": Q.Q4_1,
    "blk.0.attn_v.weight": Q.Q8_0,
    "blk.0.attn_output.weight": Q.F16,
    "blk.0.ffn_gate.weight": Q.Q4_0,
    "blk.0.ffn_up.weight": Q.Q4_1,
    "blk.0.ffn_down.weight": Q.Q8_0,
    "blk.1.attn_q.weight": Q.Q8_0,
    "blk.1.attn_k.weight": Q.Q4_0,
    "blk.1.attn_v.weight": Q.Q4_1,
    "blk.1.attn_output.weight": Q.BF16,
    "blk.1.ffn_gate.weight": Q.F16,
    "blk.1.ffn_up.weight": Q.F32,
    "blk.1.ffn_down.weight": Q.Q4_0,
}

HF_TO_GGUF = {
    "model.embed_tokens": "token_embd",
    "lm_head": "output",
    "model.norm": "output_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def gguf_name(hf: str) -> str:
    base = hf.removesuffix(".weight")
    if base in HF_TO_GGUF:
        return HF_TO_GGUF[base] + ".weight"
    _, _, layer, rest = base.split(".", 3)
    return f"blk.{layer}.{HF_TO_GGUF[rest]}.weight"


def permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: q/k rows reordered for llama.cpp's RoPE."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    # SmolLM2's tokenizer.json: every digit on its own, then GPT-2's byte-level split.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        min_frequency=2,
        show_progress=False,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator((TRAIN_TEXT + SAMPLE).splitlines(keepends=True), trainer=trainer)
    return tok


def build_model(vocab: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=EPS,
        rope_theta=ROPE_THETA,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )
    model = LlamaForCausalLM(config).eval()
    # Norm weights start at 1; perturb them so their handling is tested too.
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
    return model


def write_gguf(path: str, model: LlamaForCausalLM, tok: Tokenizer) -> None:
    w = GGUFWriter(path, "llama")
    w.add_custom_alignment(64)
    w.add_name("loratab tiny llama")
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(EPS)
    w.add_vocab_size(tok.get_vocab_size())
    w.add_file_type(7)  # mostly Q8_0; informational only

    vocab = tok.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    merges = json.loads(tok.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([TokenType.CONTROL if t in SPECIALS else TokenType.NORMAL for t in tokens])
    w.add_token_merges([" ".join(m) for m in merges])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_unk_token_id(vocab["<|endoftext|>"])
    w.add_pad_token_id(vocab["<|im_end|>"])
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")

    for hf, t in model.state_dict().items():
        name = gguf_name(hf)
        data = t.detach().numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            data = permute(data, HEADS, HEADS)
        elif name.endswith("attn_k.weight"):
            data = permute(data, HEADS, KV_HEADS)
        qtype = TYPES.get(name, Q.F32)
        if qtype == Q.F32:
            w.add_tensor(name, data)
        elif qtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    tok = build_tokenizer()
    model = build_model(tok.get_vocab_size())
    path = os.path.join(OUT, "tiny.gguf")
    write_gguf(path, model, tok)

    # The oracle: transformers' own GGUF loader (dequantizes with `gguf`, undoes the permutation).
    loaded = AutoModelForCausalLM.from_pretrained(OUT, gguf_file="tiny.gguf", dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(OUT, gguf_file="tiny.gguf")
    no_digits = tok.encode(NO_DIGITS, add_special_tokens=False).ids
    assert hf_tok.encode(NO_DIGITS, add_special_tokens=False) == no_digits, "transformers' GGUF tokenizer disagrees"

    # Sanity: the dequantized weights are close to the originals, so the permutation was undone.
    for name, t in model.state_dict().items():
        err = (loaded.state_dict()[name] - t).abs().max().item()
        assert err < 0.2, f"{name}: {err}"

    sample = tok.encode(SAMPLE, add_special_tokens=False).ids
    ids = tok.encode(LOSS_TEXT, add_special_tokens=False).ids
    assert len(ids) <= CONTEXT, len(ids)
    with torch.no_grad():
        x = torch.tensor([ids])
        loss = loaded(x, labels=x).loss.item()

    golden = {k: v.detach().float().contiguous() for k, v in loaded.state_dict().items()}
    golden["tokens"] = torch.tensor(sample, dtype=torch.int64)
    golden["loss"] = torch.tensor(loss, dtype=torch.float32)
    save_file(golden, os.path.join(OUT, "golden.safetensors"))
    c = loaded.config
    info = {
        "sample": SAMPLE,
        "tokens": sample,
        "no_digits": NO_DIGITS,
        "no_digits_tokens": no_digits,
        "loss_text": "tests/fixtures/eval.txt",
        "loss_tokens": len(ids),
        "loss": loss,
        "config": {
            "vocab_size": c.vocab_size,
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads,
            "max_position_embeddings": c.max_position_embeddings,
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_parameters["rope_theta"],
            "tie_word_embeddings": c.tie_word_embeddings,
            "bos_token_id": c.bos_token_id,
            "eos_token_id": c.eos_token_id,
        },
        "types": {k: v.name for k, v in TYPES.items()},
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(info, f, indent=2, ensure_ascii=False)
        f.write("\n")
    sizes = {n: os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT)}
    print(f"loss {loss:.6f} over {len(ids) - 1} positions; files {sizes}")


if __name__ == "__main__":
    main()
