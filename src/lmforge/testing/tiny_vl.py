"""A tiny random-weight Qwen2-VL checkpoint, built offline and deterministically.

The multimodal tests need a vision-language model that loads like a hub checkpoint
(`AutoConfig`, `AutoTokenizer`, `AutoImageProcessor`, `AutoModelForImageTextToText`) without a
network or a GPU. This module pairs the tiny BPE tokenizer of `lmforge.testing.tiny`, extended
with Qwen2-VL's vision tokens, with a two-layer Qwen2-VL whose vision tower has one block. The
image processor is set up so that a 56x56 image becomes a handful of tokens. The same arguments
always give byte-identical files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmforge.testing.tiny import build_tokenizer

# Qwen2-VL's vision markers: the processor expands each pad token into one token per merged patch.
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

# Qwen2-VL's own template, restated: ChatML turns, a default system turn, and each image or video
# content part rendered as one placeholder between vision markers.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'video' or 'video' in part %}"
    "{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
# One merged token covers (14*2)^2 pixels: these bounds keep every image between 4 and 16 tokens,
# so a 56x56 image is a 2x2 grid of merged tokens.
MIN_PIXELS = 4 * (PATCH_SIZE * MERGE_SIZE) ** 2
MAX_PIXELS = 16 * (PATCH_SIZE * MERGE_SIZE) ** 2
# Qwen2-VL's CLIP normalization.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def build_vl_tokenizer():
    """The tiny ChatML tokenizer with Qwen2-VL's vision tokens and chat template added."""
    tokenizer = build_tokenizer("qwen2")
    # Special, so that decoding with skip_special_tokens drops them and BPE never splits them.
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


VL_ARCHITECTURES = ("qwen2_vl", "qwen2_5_vl")


def build_tiny_vl_model(output_dir: str | os.PathLike, seed: int = 0, head_std: float = 0.16,
                        arch: str = "qwen2_vl") -> Path:
    """Write a random-weight Qwen2-VL (or Qwen2.5-VL), its tokenizer and image processor to `output_dir`.

    `head_std` scales the output head as in `build_tiny_model`, so that LoRA runs can move it.
    """
    if arch not in VL_ARCHITECTURES:
        raise ValueError(f"arch must be one of {VL_ARCHITECTURES}, got {arch!r}")
    import torch
    from transformers import AutoModelForImageTextToText

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_vl_tokenizer()
    config = vl_config(tokenizer, arch)

    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    _rescale_head(model, seed, head_std)
    model.generation_config = _generation_config(tokenizer)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_image_processor(out)
    (out / "lmforge_tiny.json").write_text(
        json.dumps({"arch": arch, "size": "tiny", "seed": seed}, indent=2) + "\n"
    )
    return out


def vl_config(tokenizer, arch: str = "qwen2_vl"):
    """A two-layer Qwen2-VL (or Qwen2.5-VL) config whose vision token ids are the tokenizer's."""
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in VISION_TOKENS}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        # head_dim 16: the 8 rotary frequencies are split between time, height and width.
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "depth": 1,
        "embed_dim": 32,
        "hidden_size": 64,  # the merger projects into the text model's width
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    config_class = Qwen2VLConfig
    if arch == "qwen2_5_vl":
        # Qwen2.5-VL's vision tower: windowed attention (one window of 112 pixels here) with the last of
        # the two blocks attending to the whole image, a gated MLP, and `out_hidden_size` into the text width.
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 64,
            "patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
            "window_size": 112,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        }
        config_class = Qwen2_5_VLConfig
    return config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def _rescale_head(model, seed: int, head_std: float) -> None:
    import torch

    with torch.no_grad():
        head = model.get_output_embeddings().weight
        gen = torch.Generator().manual_seed(seed + 1)
        head.copy_(torch.randn(head.shape, generator=gen) * head_std)


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    stop = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")})
    return GenerationConfig(eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, do_sample=False)


def _write_image_processor(out: Path) -> None:
    """Save the PIL image processor: it needs no torchvision, unlike the default torch backend."""
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=PATCH_SIZE,
        merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        image_mean=IMAGE_MEAN,
        image_std=IMAGE_STD,
    )
    processor.save_pretrained(out)
