"""Tiny random-weight causal language models, built offline and deterministically.

The tests, the quick start and the benchmarks need a model that loads with `AutoModelForCausalLM`
and `AutoTokenizer` like any hub checkpoint, without a network. This module trains a small
byte-level BPE tokenizer on text bundled with the package and pairs it with a random-weight
Llama, Qwen2 or Qwen3 model. The same arguments always give byte-identical files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import UserError

CORPUS_DIR = Path(__file__).parent / "corpus"

# The control tokens of the llama3 and ChatML families, plus the GLM, Gemma and Phi-4 markers,
# so that every bundled template renders to real single-id control tokens on the tiny tokenizer.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|im_sep|>",
    "[gMASK]",
    "sop",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|observation|>",
    "<bos>",
    "<eos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<s>",
    "</s>",
    "<unk>",
    "<pad>",
]
# Added (non-special) tokens that Qwen-family tokenizers carry: rendered as text when decoding
# with skip_special_tokens, but kept as one id each.
ADDED_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class TinySize:
    """Shape of a tiny model; the vocabulary size is the tokenizer's unless `vocab_size` is set."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int | None = None
    tie_word_embeddings: bool = False


SIZES = {
    # A few MB: fast enough for every test on two CPU cores.
    "tiny": TinySize(128, 256, 4, 4, 2),
    # Qwen2.5-0.5B's shape (about 494M parameters), for benchmarks only: never committed.
    "0.5b": TinySize(896, 4864, 24, 14, 2, vocab_size=151936, tie_word_embeddings=True),
}
ARCHITECTURES = ("llama", "qwen2", "qwen3")
STORAGE_DTYPES = ("float32", "bfloat16")
DEFAULT_VOCAB_SIZE = 4096


def corpus_lines() -> list[str]:
    """The bundled English and Chinese text that the tiny tokenizer is trained on."""
    lines: list[str] = []
    for path in sorted(CORPUS_DIR.glob("*.txt")):
        lines.extend(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return lines


def build_tokenizer(arch: str = "llama", vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a byte-level BPE tokenizer on the bundled corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer=trainer)

    if arch == "llama":
        extra = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": None}
        chat_template = LLAMA3_CHAT_TEMPLATE
    else:
        extra = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
        chat_template = CHATML_CHAT_TEMPLATE
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in extra.values()],
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
        **{k: v for k, v in extra.items() if v is not None},
    )
    fast.add_tokens(ADDED_TOKENS)
    if arch == "llama":
        # Llama-3 prepends <|begin_of_text|> to every encode; reproduce that with a post-processor.
        from tokenizers import processors

        bos_id = fast.convert_tokens_to_ids("<|begin_of_text|>")
        fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
            special_tokens=[("<|begin_of_text|>", bos_id)],
        )
    fast.chat_template = chat_template
    return fast


def build_tiny_model(
    output_dir: str | os.PathLike,
    arch: str = "llama",
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    head_std: float = 0.16,
    dtype: str = "float32",
) -> Path:
    """Write a random-weight model and its tokenizer to `output_dir` and return the path.

    `head_std` is the output head's init scale: with the usual 0.02 a LoRA run cannot move the
    near-uniform head and the tiny model never learns, with about 0.16 it memorizes small sets.
    `dtype` is the precision the weights are stored in: `bfloat16` is how released checkpoints such as
    Qwen2.5's are published, which matters to what loading them costs; the values are the float32 ones rounded.
    """
    if arch not in ARCHITECTURES:
        raise UserError(f"Unknown tiny-model architecture '{arch}'. Choose one of: {', '.join(ARCHITECTURES)}.")
    if size not in SIZES:
        raise UserError(f"Unknown tiny-model size '{size}'. Choose one of: {', '.join(SIZES)}.")
    if dtype not in STORAGE_DTYPES:
        raise UserError(f"Unknown tiny-model dtype '{dtype}'. Choose one of: {', '.join(STORAGE_DTYPES)}.")

    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(arch, vocab_size)
    shape = SIZES[size]
    config = _model_config(arch, shape, tokenizer)

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if not shape.tie_word_embeddings:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(seed + 1)
            head = model.get_output_embeddings().weight
            head.copy_(torch.randn(head.shape, generator=gen) * head_std)
    eos_ids = sorted({tokenizer.eos_token_id, *_stop_ids(arch, tokenizer)})
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        do_sample=False,
    )
    if dtype != "float32":
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "lmforge_tiny.json").write_text(
        json.dumps({"arch": arch, "size": size, "seed": seed, "vocab_size": vocab_size, "dtype": dtype}, indent=2) + "\n"
    )
    return out


def _stop_ids(arch: str, tokenizer) -> list[int]:
    names = ["<|eot_id|>", "<|eom_id|>"] if arch == "llama" else ["<|im_end|>"]
    return [tokenizer.convert_tokens_to_ids(name) for name in names]


def _model_config(arch: str, shape: TinySize, tokenizer):
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=shape.vocab_size or len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        max_position_embeddings=4096,
        tie_word_embeddings=shape.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-6,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    return Qwen3Config(head_dim=shape.hidden_size // shape.num_attention_heads, **common)
