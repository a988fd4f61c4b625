"""Multimodal plugins: how a model family turns <image>/<video> placeholders into vision tokens and pixels.

LLaMA-Factory's `mm_plugin.py`, for the families lmforge runs. A template names its plugin
(`Template.mm_plugin`); `get_mm_plugin` hands out the object. A plugin does two things, both from
the model's processor (image processor and, for video, the PyAV frame sampler of
`lmforge.model.vl_processor`) so that the token count always matches the pixels:

- `media_tokens`: at tokenization, the text each placeholder of one conversation expands to
  (Qwen2-VL: `<|vision_start|>` + `<|image_pad|>` x (t*h*w / merge_size^2) + `<|vision_end|>`);
- `mm_inputs`: at batching, the pixel tensors and grids of a batch's media (`pixel_values`,
  `image_grid_thw`, `pixel_values_videos`, `video_grid_thw`).

Plugins judge nothing: they count placeholders and raise `MediaReadError` for a file they cannot
read. Which row is dropped, and why, is the processor's call (`processors/supervised.py`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .media import MediaTokens
from lmforge.errors import UserError

IMAGES, VIDEOS = "images", "videos"


def placeholders() -> dict[str, str]:
    """The placeholder text of each media kind: `<image>` and `<video>`, or the env overrides.

    Read on every call (LLaMA-Factory reads them at import), so a test or a run can change them.
    """
    return {IMAGES: os.getenv("IMAGE_PLACEHOLDER", "<image>"), VIDEOS: os.getenv("VIDEO_PLACEHOLDER", "<video>")}


class MediaReadError(Exception):
    """A media file is missing or cannot be decoded; the message names the file."""


@dataclass(frozen=True)
class MMPlugin:
    """The text-only plugin: no media kind is supported. Subclasses name their vision tokens."""

    name: str = "base"
    image_token: str | None = None
    video_token: str | None = None

    def supports(self, kind: str) -> bool:
        """Whether the model takes media of `kind` (`images` or `videos`)."""
        return (self.image_token if kind == IMAGES else self.video_token) is not None

    def count_placeholders(self, messages: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """How many placeholders of each kind the messages hold, all turns together."""
        marks = placeholders()
        texts = [message.get("content") or "" for message in messages]
        return {kind: sum(text.count(mark) for text in texts) for kind, mark in marks.items()}

    def media_tokens(self, images: Sequence[Any], videos: Sequence[Any], processor, data_args) -> MediaTokens:
        """The expansion of each placeholder of one conversation, in order."""
        raise NotImplementedError(f"The '{self.name}' plugin takes no media.")

    def mm_inputs(self, images: Sequence[Any], videos: Sequence[Any], processor, data_args) -> dict[str, Any]:
        """The model's pixel inputs for a batch's media (all rows' images in row order), as torch tensors."""
        raise NotImplementedError(f"The '{self.name}' plugin takes no media.")

    def part_text(self, kind: str) -> str | None:
        """What a chat template writes for one image or video content part, before the processor expands it.

        None for a kind the model does not take.
        """
        return None

    def token_type_ids(self, input_ids, tokenizer):
        """`mm_token_type_ids`: 1 on image tokens, 2 on video tokens, 0 elsewhere (Qwen2-VL's M-RoPE needs it)."""
        import torch

        types = torch.zeros_like(input_ids)
        for value, token in ((1, self.image_token), (2, self.video_token)):
            if token is not None:
                types[input_ids == tokenizer.convert_tokens_to_ids(token)] = value
        return types


@dataclass(frozen=True)
class Qwen2VLPlugin(MMPlugin):
    """Qwen2-VL and Qwen2.5-VL: one pad token per merged patch, between vision start and end markers."""

    vision_start: str = "<|vision_start|>"
    vision_end: str = "<|vision_end|>"

    def media_tokens(self, images: Sequence[Any], videos: Sequence[Any], processor, data_args) -> MediaTokens:
        inputs = self.mm_inputs(images, videos, processor, data_args, tensors=False)
        merge = processor.image_processor.merge_size
        marks = placeholders()
        return MediaTokens(
            image_placeholder=marks[IMAGES],
            video_placeholder=marks[VIDEOS],
            images=tuple(self._expand(self.image_token, grid, merge) for grid in inputs.get("image_grid_thw", ())),
            videos=tuple(self._expand(self.video_token, grid, merge) for grid in inputs.get("video_grid_thw", ())),
        )

    def part_text(self, kind: str) -> str | None:
        # One pad token: the processor repeats it once per merged patch of the image it is given.
        token = self.image_token if kind == IMAGES else self.video_token
        return None if token is None else self.vision_start + token + self.vision_end

    def _expand(self, token: str | None, grid, merge_size: int) -> str:
        t, h, w = (int(v) for v in grid)
        return self.vision_start + token * (t * h * w // merge_size**2) + self.vision_end

    def mm_inputs(self, images: Sequence[Any], videos: Sequence[Any], processor, data_args,
                  tensors: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {}
        kind = "pt" if tensors else "np"
        if images:
            pictures = [load_image(image, data_args.image_max_pixels, data_args.image_min_pixels) for image in images]
            data = processor.image_processor(images=pictures, return_tensors=kind)
            out.update(pixel_values=data["pixel_values"], image_grid_thw=data["image_grid_thw"])
        if videos:
            sampler = processor.video_processor
            # A fresh sampler on each access (see vl_processor): setting the run's sampling on it is local.
            sampler.fps, sampler.maxlen = data_args.video_fps, data_args.video_maxlen
            sampler.max_pixels, sampler.min_pixels = data_args.video_max_pixels, data_args.video_min_pixels
            try:
                data = sampler(videos=[str(video) for video in videos], return_tensors=kind)
            except UserError as err:  # vl_processor's read errors name the file
                raise MediaReadError(str(err)) from None
            out.update(pixel_values_videos=data["pixel_values_videos"], video_grid_thw=data["video_grid_thw"])
            # Qwen2.5-VL times its rotary positions by the seconds per temporal patch; Qwen2-VL takes no such input.
            if "second_per_grid_ts" in getattr(processor, "model_input_names", ()):
                out["second_per_grid_ts"] = data["second_per_grid_ts"]
        return out


PLUGINS: dict[str, MMPlugin] = {
    "base": MMPlugin(),
    "qwen2_vl": Qwen2VLPlugin(name="qwen2_vl", image_token="<|image_pad|>", video_token="<|video_pad|>"),
}


def get_mm_plugin(name: str | None) -> MMPlugin:
    """The plugin a template names (the text-only one for None)."""
    if name is None:
        return PLUGINS["base"]
    if name not in PLUGINS:
        raise UserError(f"Unknown multimodal plugin '{name}'; lmforge has: {', '.join(sorted(PLUGINS))}.")
    return PLUGINS[name]


def load_image(image: Any, max_pixels: int, min_pixels: int):
    """An RGB PIL image scaled into [min_pixels, max_pixels] by an area factor (LLaMA-Factory's `_preprocess_image`).

    `image` is a path, a PIL image, or the {"path"/"bytes"} dict of a hub Image column.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if isinstance(image, Image.Image):
            picture = image
        elif isinstance(image, Mapping):
            if image.get("bytes"):
                import io

                picture = Image.open(io.BytesIO(image["bytes"]))
            else:
                picture = Image.open(image["path"])
        else:
            picture = Image.open(os.fspath(image))
        picture.load()
    except FileNotFoundError:
        raise MediaReadError(f"image file '{image}' does not exist") from None
    except (UnidentifiedImageError, OSError, KeyError, TypeError) as err:
        raise MediaReadError(f"cannot read image '{image}': {str(err).splitlines()[0] if str(err) else err}") from None
    area = picture.width * picture.height
    if area > max_pixels or area < min_pixels:
        factor = math.sqrt((max_pixels if area > max_pixels else min_pixels) / area)
        picture = picture.resize((max(1, int(picture.width * factor)), max(1, int(picture.height * factor))))
    # Qwen2-VL's smallest input: one 28x28 merged patch on each side (LLaMA-Factory's Qwen2-VL plugin).
    if min(picture.width, picture.height) < 28:
        factor = 28 / min(picture.width, picture.height)
        picture = picture.resize((math.ceil(picture.width * factor), math.ceil(picture.height * factor)))
    return picture.convert("RGB") if picture.mode != "RGB" else picture
