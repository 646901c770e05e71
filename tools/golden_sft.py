#!/usr/bin/env python3
"""Golden data for instruction fine-tuning (loratab::train::chat and the trainer's labels).

Writes:

  tests/fixtures/chat/tokenizer.json   a small byte-level BPE (trained here on tests/fixtures/eval.txt
                                       plus some unicode lines) whose added special tokens are
                                       ChatML's <|im_start|>/<|im_end|>, Llama-3's
                                       <|begin_of_text|>/<|start_header_id|>/<|end_header_id|>/<|eot_id|>,
                                       <s>, </s> and <|endoftext|>.
  tests/fixtures/chat/golden.json      per (template, conversation, add_generation_prompt): the text
                                       and the ids of transformers'
                                       apply_chat_template(messages, tokenize=True, add_generation_prompt=…)
                                       with that tokenizer (PreTrainedTokenizerFast, bos/eos set).
                                       Templates: SmolLM2's (as in its GGUF's tokenizer.chat_template),
                                       Qwen2.5's without the tools branch, Meta-Llama-3-Instruct's,
                                       and Mistral-7B-Instruct-v0.1's with `.strip()` (Python string
                                       method) on the content.
  tests/fixtures/lora/<case>/sft.safetensors   for the llama-qv and gpt2-cattn cases of
                                       tools/golden_lora.py: a right-padded batch of two examples of
                                       different lengths, made from that case's golden `tokens`, whose
                                       labels are -100 on "prompt" positions and on the padding:
      tokens   int64 [2, 16]  example 0 = tokens[0, :11] + 5 pad ids (0); example 1 = tokens[1]
      labels   int64 [2, 16]  -100 where not trained on (example 0: positions < 4 and the padding;
                              example 1: positions < 7 and 10..12, a second "user turn")
      lengths  int64 [2]      11, 16
      loss     f32 []         PeftModel(base, adapter/)(tokens, attention_mask, labels=labels).loss
                              (transformers: shift by one, mean over labels != -100)
      grad.<PEFT key>         its gradient of every lora_A / lora_B

Run from the repo root: /work/wt-golden/.venv-golden/bin/python tools/golden_sft.py (deterministic).
"""

import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import golden_lora  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO_ROOT, "tests", "fixtures")
CHAT = os.path.join(FIXTURES, "chat")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>",
            "<|end_header_id|>", "<|eot_id|>", "<s>", "</s>"]

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN25 = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'].strip() + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

TEMPLATES = [
    dict(name="smollm2", template=SMOLLM2, bos="<|im_start|>", eos="<|im_end|>"),
    dict(name="qwen2.5", template=QWEN25, bos=None, eos="<|im_end|>"),
    dict(name="llama3", template=LLAMA3, bos="<|begin_of_text|>", eos="<|eot_id|>"),
    dict(name="mistral", template=MISTRAL, bos="<s>", eos="</s>"),
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris."}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello — how can I help?"},
     {"role": "user", "content": "  Translate 'thank you' to Japanese.\n"},
     {"role": "assistant", "content": "ありがとう (arigatō) 🙏\nnaïve café, Ünïcödé."}],
    [{"role": "system", "content": "You answer briefly."},
     {"role": "user", "content": "Two plus two?"},
     {"role": "assistant", "content": "Four."},
     {"role": "user", "content": "And times three?"},
     {"role": "assistant", "content": "Twelve."}],
]


def build_tokenizer(text: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def ids_of(out):
    # transformers 5 returns a BatchEncoding from tokenize=True; 4.x a list.
    return list(out["input_ids"]) if hasattr(out, "keys") else list(out)


def chat_goldens(eval_text: str) -> None:
    os.makedirs(CHAT, exist_ok=True)
    extra = "ありがとう (arigatō) 🙏 naïve café Ünïcödé [INST] [/INST] Question: Answer:\n"
    tok = build_tokenizer(eval_text + extra * 3)
    path = os.path.join(CHAT, "tokenizer.json")
    tok.save(path)
    cases = []
    for t in TEMPLATES:
        fast = PreTrainedTokenizerFast(tokenizer_file=path, bos_token=t["bos"], eos_token=t["eos"])
        fast.chat_template = t["template"]
        for c, messages in enumerate(CONVERSATIONS):
            if t["name"] == "mistral" and messages[0]["role"] == "system":
                continue  # the template raises (only user and assistant roles)
            # The whole conversation, and every prefix ending before an assistant turn with the
            # generation prompt (what answer masking renders).
            renders = [(messages, False)]
            renders += [(messages[:i], True) for i, m in enumerate(messages) if m["role"] == "assistant"]
            for msgs, agp in renders:
                text = fast.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp)
                ids = ids_of(fast.apply_chat_template(msgs, tokenize=True, add_generation_prompt=agp))
                assert ids == fast(text, add_special_tokens=False)["input_ids"]
                assert any(i >= len(SPECIALS) for i in ids) and (t["name"] == "mistral" or any(i < len(SPECIALS) for i in ids))
                cases.append(dict(template=t["name"], conversation=c, messages=msgs, add_generation_prompt=agp,
                                  text=text, ids=ids))
    out = dict(
        source="tools/golden_sft.py",
        templates={t["name"]: dict(template=t["template"], bos_token=t["bos"], eos_token=t["eos"]) for t in TEMPLATES},
        cases=cases,
        versions=dict(transformers=__import__("transformers").__version__,
                      tokenizers=__import__("tokenizers").__version__),
    )
    with open(os.path.join(CHAT, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"chat: {len(cases)} renders, tokenizer of {tok.get_vocab_size()} ids")


def sft_golden(case: str, base: str) -> None:
    folder = os.path.join(FIXTURES, "lora", case)
    from safetensors.torch import load_file
    tokens = load_file(os.path.join(folder, "golden.safetensors"))["tokens"]
    assert tokens.shape == (2, 16)
    lengths = [11, 16]
    ids = torch.zeros(2, 16, dtype=torch.int64)
    labels = torch.full((2, 16), -100, dtype=torch.int64)
    mask = torch.zeros(2, 16, dtype=torch.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = tokens[b, :n]
        labels[b, :n] = tokens[b, :n]
        mask[b, :n] = 1
    labels[0, :4] = -100
    labels[1, :7] = -100
    labels[1, 10:12] = -100

    model = PeftModel.from_pretrained(golden_lora.load_base(base), os.path.join(folder, "adapter"), is_trainable=True)
    model.eval()
    params = golden_lora.lora_params(model)
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    loss.backward()
    # Independent check of the definition: next-token cross-entropy, mean over labels != -100.
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        tgt = labels[:, 1:].reshape(-1)
        keep = tgt != -100
        ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1])[keep].double(), tgt[keep])
    assert abs(float(ref) - float(loss)) < 1e-5, (float(ref), float(loss))
    tensors = {"tokens": ids, "labels": labels, "lengths": torch.tensor(lengths, dtype=torch.int64),
               "loss": torch.tensor(float(loss), dtype=torch.float32)}
    for k, p in params:
        assert p.grad is not None and p.grad.abs().max() > 0, k
        tensors[f"grad.{k}"] = p.grad.detach().clone().contiguous()
    save_file(tensors, os.path.join(folder, "sft.safetensors"))
    print(f"{case}: masked loss {float(loss):.6f} over {int(keep.sum())} targets, {len(params)} LoRA tensors")


def main() -> int:
    os.chdir(REPO_ROOT)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    with open(os.path.join(FIXTURES, "eval.txt"), encoding="utf-8", newline="") as f:
        eval_text = f.read()
    chat_goldens(eval_text)
    sft_golden("llama-qv", "llama-tiny")
    sft_golden("gpt2-cattn", "gpt2-tiny")
    return 0


if __name__ == "__main__":
    sys.exit(main())
