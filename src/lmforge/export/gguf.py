"""Write a transformers causal LM as a GGUF file that llama.cpp (and Ollama) load as they are.

The file holds llama.cpp's tensor names and layouts (q/k rows permuted for the llama architecture,
as llama.cpp's rotary embedding expects), the model hyper-parameters, the byte-level BPE tokenizer
(tokens, merges, token types, special ids, the pre-tokenizer name) and the chat template.
Weights are stored as f32, f16, bf16 or q8_0; norms and biases always stay f32.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.config.export import GGUF_TYPES
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    import numpy as np

logger = get_logger(__name__)

# transformers model_type -> llama.cpp architecture. Mistral is the llama architecture in llama.cpp.
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}
PERMUTED_QK = ("llama",)  # llama.cpp's llama graph expects the q/k rows in its rotary order
ROPE_TYPES = ("default", "linear", "llama3")

# Pre-tokenizer split patterns, by the name llama.cpp knows them under (its `tokenizer.ggml.pre`).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def gguf_file_name(gguf_type: str) -> str:
    """The file name `lmforge export` gives the GGUF of weight type `gguf_type`."""
    return f"model-{gguf_type}.gguf"


def check_supported(config) -> str:
    """The llama.cpp architecture of a model config, or a UserError naming what is supported."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise UserError(
            f"GGUF export does not support the '{model_type}' architecture yet; supported: "
            f"{', '.join(ARCHITECTURES)}. Export with export_format: safetensors instead."
        )
    _rope(config)
    return arch


# ---- tokenizer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GGUFVocab:
    """The tokenizer as GGUF metadata."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
    bos_id: int | None
    eos_id: int | None
    pad_id: int | None
    add_bos: bool
    chat_template: str | None


def pre_tokenizer_name(backend: dict) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (its split regex), or a UserError."""
    pre = backend.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        splits = [s for s in steps if s.get("type") == "Split"]
        levels = [s for s in steps if s.get("type") == "ByteLevel"]
        if len(splits) == 1 and len(levels) == 1 and len(steps) == 2 and not levels[0].get("use_regex", True):
            pattern = (splits[0].get("pattern") or {}).get("Regex")
            if pattern in SPLIT_PRE_TOKENIZERS:
                return SPLIT_PRE_TOKENIZERS[pattern]
    raise UserError(
        "GGUF export supports byte-level BPE tokenizers that split text like GPT-2, Llama 3 or Qwen2; this "
        f"tokenizer's pre-tokenizer is {json.dumps(pre)[:200]}. Export with export_format: safetensors instead."
    )


def gguf_vocab(tokenizer, vocab_size: int) -> GGUFVocab:
    """Tokens (padded to the embedding rows), merges, token types and special ids of `tokenizer`."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model") or {}
    if model.get("type") != "BPE" or not _byte_level(backend):
        raise UserError(
            f"GGUF export supports byte-level BPE tokenizers (Llama 3, Qwen2/3 style); this one is a "
            f"{model.get('type')} tokenizer. Export with export_format: safetensors instead."
        )
    normalizer = backend.get("normalizer")
    if normalizer not in (None, {"type": "NFC"}):
        raise UserError(f"GGUF export cannot carry this tokenizer's normalizer ({normalizer}); "
                        "export with export_format: safetensors instead.")
    pre = pre_tokenizer_name(backend)

    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(by_id) > vocab_size:
        raise UserError(f"The tokenizer has {len(by_id)} tokens but the model's embeddings only {vocab_size} rows; "
                        "set resize_vocab: true when training, or fix the tokenizer.")
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(_token_type("UNUSED"))
        elif index in added:
            tokens.append(token)
            types.append(_token_type("CONTROL" if added[index].special else "USER_DEFINED"))
        else:
            tokens.append(token)
            types.append(_token_type("NORMAL"))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    probe = tokenizer("a").input_ids
    bos = tokenizer.bos_token_id
    return GGUFVocab(
        tokens=tokens,
        token_types=types,
        merges=merges,
        pre=pre,
        bos_id=bos,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=bos is not None and bool(probe) and probe[0] == bos,
        chat_template=tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None,
    )


def _byte_level(backend: dict) -> bool:
    text = json.dumps(backend.get("pre_tokenizer")) + json.dumps(backend.get("decoder"))
    return '"ByteLevel"' in text


def _token_type(name: str) -> int:
    import gguf

    return int(getattr(gguf.TokenType, name))


# ---- hyper-parameters -----------------------------------------------------------------------------


def _rope(config) -> tuple[str, dict]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type") or params.get("type") or "default"
    if rope_type not in ROPE_TYPES:
        raise UserError(f"GGUF export does not support rope scaling '{rope_type}' yet; supported: "
                        f"{', '.join(ROPE_TYPES)}.")
    params.setdefault("rope_theta", getattr(config, "rope_theta", None) or 10000.0)
    return rope_type, params


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def llama3_rope_factors(config, params: dict) -> np.ndarray:
    """Per-frequency rope factors of Llama 3.1 scaling (the `rope_freqs` tensor llama.cpp reads)."""
    import numpy as np

    dim = _head_dim(config)
    base = float(params["rope_theta"])
    factor = float(params.get("factor", 8.0))
    low = float(params.get("low_freq_factor", 1.0))
    high = float(params.get("high_freq_factor", 4.0))
    old = float(params.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _write_hparams(writer, config, name: str, gguf_type: str, vocab_size: int) -> None:
    import gguf

    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)
    head_dim = _head_dim(config)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope_type, params = _rope(config)
    writer.add_rope_freq_base(float(params["rope_theta"]))
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    writer.add_file_type(int(getattr(gguf.LlamaFileType, FILE_TYPES[gguf_type])))


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}


def _write_vocab(writer, vocab: GGUFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


# ---- tensors --------------------------------------------------------------------------------------


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (its convert script's `permute`)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _encode(data: np.ndarray, gguf_type: str) -> tuple[np.ndarray, object | None]:
    """(array, raw ggml type or None) of one tensor stored as `gguf_type` (1-D tensors stay f32)."""
    import gguf
    import numpy as np

    data = np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim <= 1 or gguf_type == "f32":
        return data, None
    if gguf_type == "f16":
        return data.astype(np.float16), None
    if gguf_type == "bf16":
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return data.astype(np.float16), None  # rows that q8_0 blocks do not divide stay f16, as llama.cpp does
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def gguf_tensors(model, arch: str) -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, float32 array) of every weight of `model`, in llama.cpp's layout."""
    import gguf
    import torch

    config = model.config
    arch_enum = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[arch]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out: list[tuple[str, np.ndarray]] = []
    rope_type, params = _rope(config)
    if rope_type == "llama3":
        out.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", llama3_rope_factors(config, params)))
    for name, tensor in model.state_dict().items():
        if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise UserError(f"GGUF export: the {arch} architecture has no place for the tensor '{name}'; "
                            "this model is not a plain " + arch + " model. Export with export_format: safetensors.")
        data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
        if arch in PERMUTED_QK:
            if name.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute_qk(data, n_head, n_head)
            elif name.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute_qk(data, n_head, n_kv)
        out.append((new_name, data))
    return out


# ---- the file -------------------------------------------------------------------------------------


def write_gguf(model, tokenizer, path: Path, gguf_type: str = "f16", name: str = "model") -> Path:
    """Write `model` (a merged transformers causal LM) and `tokenizer` as a GGUF file at `path`.

    The file is written under a temporary name next to `path` and renamed when complete.
    """
    import gguf

    if gguf_type not in GGUF_TYPES:
        raise UserError(f"'gguf_type' is '{gguf_type}', which is not one of: {', '.join(GGUF_TYPES)}.")
    config = model.config
    arch = check_supported(config)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    vocab = gguf_vocab(tokenizer, vocab_size)
    tensors = gguf_tensors(model, arch)

    tmp = path.with_name(f".{path.name}.partial")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        _write_hparams(writer, config, name, gguf_type, vocab_size)
        _write_vocab(writer, vocab)
        for tensor_name, data in tensors:
            encoded, raw_dtype = _encode(data, gguf_type)
            writer.add_tensor(tensor_name, encoded, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, path)
    logger.info(f"Wrote {path} ({arch}, {gguf_type}, {len(tensors)} tensors)")
    return path
