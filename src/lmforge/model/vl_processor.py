"""Qwen2-VL and Qwen2.5-VL processors that work without torchvision.

transformers' `Qwen2VLProcessor` insists on a video processor, and the only Qwen2-VL video
processor needs torchvision, which CPU-only installs often lack (PyPI's torchvision is a CUDA
build that may not match the installed torch). Without it `AutoProcessor` cannot build the
processor at all. The classes
below drop the video processor from the constructor and put a small PyAV-based one in its
place: frames are decoded with PyAV, sampled at `fps` (at most `maxlen`), run through the PIL
image processor one by one, and consecutive frames are grouped into temporal patches, which is
the layout the vision tower expects for `pixel_values_videos`.

`register()` maps the `qwen2_vl` and `qwen2_5_vl` model types to these classes in
`AutoProcessor`; `load_processor(path)` registers and loads in one call.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from lmforge.errors import UserError

# LLaMA-Factory's video defaults: two frames a second, at most 128 frames, about 256x256 a frame.
DEFAULT_VIDEO_FPS = 2.0
DEFAULT_VIDEO_MAXLEN = 128
DEFAULT_VIDEO_MAX_PIXELS = 256 * 256
DEFAULT_VIDEO_MIN_PIXELS = 16 * 16

# A folder's image processor settings: preprocessor_config.json in hub checkpoints, or the
# "image_processor" entry of processor_config.json where a processor was saved by transformers 5.
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def image_seqlen(grid_thw, merge_size: int) -> int:
    """How many placeholder tokens an image or video with this (t, h, w) patch grid expands to."""
    t, h, w = (int(v) for v in grid_thw)
    return t * h * w // merge_size**2


@dataclass(frozen=True)
class SampledVideo:
    """Decoded frames (T, H, W, 3 uint8) and the rate they were sampled at."""

    frames: np.ndarray
    fps: float


class PilVideoProcessor:
    """Stands in for `Qwen2VLVideoProcessor`: videos through the PIL image processor, frame by frame.

    It is not a transformers `BaseVideoProcessor` (that class needs torchvision), so it is never
    saved: the processor rebuilds it from the image processor on every load.
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, image_processor, fps=DEFAULT_VIDEO_FPS, maxlen=DEFAULT_VIDEO_MAXLEN,
                 max_pixels=DEFAULT_VIDEO_MAX_PIXELS, min_pixels=DEFAULT_VIDEO_MIN_PIXELS):
        self.image_processor = image_processor
        self.merge_size = image_processor.merge_size
        self.temporal_patch_size = image_processor.temporal_patch_size
        self.fps, self.maxlen = fps, maxlen
        self.max_pixels, self.min_pixels = max_pixels, min_pixels

    def __call__(self, videos, return_tensors=None, fps=None, **_ignored) -> BatchFeature:
        """Videos (paths, or frame arrays already sampled at `fps`) to pixel values and grids."""
        fps = fps or self.fps
        sampled = [self._sample(video, fps) for video in _as_video_list(videos)]
        data = frames_to_inputs(self.image_processor, [s.frames for s in sampled], self.max_pixels, self.min_pixels)
        # Qwen2.5-VL times its rotary positions by the seconds one temporal patch spans.
        data["second_per_grid_ts"] = [self.temporal_patch_size / s.fps for s in sampled]
        return BatchFeature(data, tensor_type=return_tensors)

    def _sample(self, video, fps: float) -> SampledVideo:
        if isinstance(video, (str, os.PathLike)):
            return read_video(video, fps=fps, maxlen=self.maxlen)
        return SampledVideo(np.stack([np.asarray(frame) for frame in video]), fps)


class _PilVideoMixin:
    """What both processors share: no video processor argument, the PIL one built on demand."""

    @property
    def video_processor(self) -> PilVideoProcessor:
        # A property rather than an attribute: `ProcessorMixin` saves and type-checks attributes,
        # and this object is neither a transformers class nor meant to be written to disk.
        return PilVideoProcessor(self.image_processor)


class Qwen2VLPilProcessor(_PilVideoMixin, Qwen2VLProcessor):
    """`Qwen2VLProcessor` without the torchvision video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # `ProcessorMixin` reads the sub-processors off this signature: only image and tokenizer.
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def _process_videos(self, videos, **kwargs):
        processed, replacements = super()._process_videos(videos, **kwargs)
        # Qwen2-VL's forward takes no such argument.
        processed.pop("second_per_grid_ts", None)
        return processed, replacements


class Qwen2_5_VLPilProcessor(_PilVideoMixin, Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the torchvision video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    def _process_videos(self, videos, **kwargs):
        # Skip the parent's override: it derives second_per_grid_ts from torchvision's video
        # metadata, and PilVideoProcessor returns it already.
        return ProcessorMixin._process_videos(self, videos, **kwargs)


def register() -> None:
    """Make `AutoProcessor` return the torchvision-free processors; safe to call any number of times."""
    from transformers import AutoProcessor, Qwen2_5_VLConfig, Qwen2VLConfig

    AutoProcessor.register(Qwen2VLConfig, Qwen2VLPilProcessor, exist_ok=True)
    AutoProcessor.register(Qwen2_5_VLConfig, Qwen2_5_VLPilProcessor, exist_ok=True)


PROCESSORS = {"qwen2_vl": Qwen2VLPilProcessor, "qwen2_5_vl": Qwen2_5_VLPilProcessor}


def load_processor(path: str | os.PathLike):
    """The processor of the Qwen2-VL or Qwen2.5-VL model folder `path`."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"Model folder '{folder}' does not exist.")
    if not (folder / "config.json").is_file():
        raise UserError(f"'{folder}' has no config.json; it is not a model folder.")
    if not any((folder / name).is_file() for name in IMAGE_PROCESSOR_FILES):
        raise UserError(
            f"'{folder}' has no image processor config (preprocessor_config.json or processor_config.json)."
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"'{folder}' has no tokenizer (tokenizer.json or tokenizer_config.json).")
    model_type = _read_json(folder / "config.json").get("model_type")
    if model_type not in PROCESSORS:
        raise UserError(
            f"'{folder}' is a '{model_type}' model; multimodal processing supports: {', '.join(PROCESSORS)}."
        )
    register()
    return PROCESSORS[model_type].from_pretrained(folder)


# What a vision-language model folder needs besides the weights and the tokenizer: the processor configs.
# A model saved after training or export gets them, so that it loads (and chats about images) on its own.
PROCESSOR_FILES = ("preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json")


def copy_processor_files(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Copy the processor configs of model folder `source` into `target`; return the names copied."""
    import shutil

    copied = []
    for name in PROCESSOR_FILES:
        if (Path(source) / name).is_file():
            shutil.copyfile(Path(source) / name, Path(target) / name)
            copied.append(name)
    return copied


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a valid JSON object; the model folder is damaged.")
    return data


def video_inputs(processor, paths, fps: float = DEFAULT_VIDEO_FPS, maxlen: int = DEFAULT_VIDEO_MAXLEN,
                 max_pixels: int = DEFAULT_VIDEO_MAX_PIXELS, min_pixels: int = DEFAULT_VIDEO_MIN_PIXELS) -> dict:
    """`pixel_values_videos` and `video_grid_thw` for the video files `paths`, as torch tensors."""
    import torch

    frames = [read_video(path, fps=fps, maxlen=maxlen).frames for path in paths]
    data = frames_to_inputs(processor.image_processor, frames, max_pixels, min_pixels)
    return {key: torch.from_numpy(value) for key, value in data.items()}


def read_video(
    path: str | os.PathLike, fps: float = DEFAULT_VIDEO_FPS, maxlen: int = DEFAULT_VIDEO_MAXLEN
) -> SampledVideo:
    """Decode `path` with PyAV, keeping about `fps` frames a second and at most `maxlen` frames."""
    if importlib.util.find_spec("av") is None:
        raise UserError("Reading videos needs PyAV: pip install av")
    import av
    from transformers.video_utils import load_video

    path = str(path)
    if not os.path.isfile(path):
        raise UserError(f"Video file '{path}' does not exist.")
    rate = _SampleRate(fps, maxlen)
    try:
        frames, _ = load_video(path, backend="pyav", sample_indices_fn=rate.indices)
    except (av.FFmpegError, IndexError, ValueError, ZeroDivisionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"Cannot decode video '{path}': {reason}") from None
    if len(frames) == 0:
        raise UserError(f"Cannot decode video '{path}': no frames.")
    return SampledVideo(np.asarray(frames), rate.sampled_fps)


class _SampleRate:
    """Picks evenly spaced frame indices and remembers the rate they amount to."""

    def __init__(self, fps: float, maxlen: int):
        self.fps, self.maxlen = fps, maxlen
        self.sampled_fps = fps

    def indices(self, metadata, **_ignored) -> np.ndarray:
        total = int(metadata.total_num_frames or 0)
        if total <= 0 or not metadata.fps:
            raise ValueError("the container reports no frame count or frame rate")
        duration = total / metadata.fps
        count = min(total, self.maxlen, max(1, math.floor(duration * self.fps)))
        self.sampled_fps = count / duration
        return np.linspace(0, total - 1, count).round().astype(int)


def frames_to_inputs(image_processor, videos: list[np.ndarray], max_pixels: int, min_pixels: int) -> dict:
    """Pixel values and (t, h, w) grids of sampled videos, in the Qwen2-VL vision tower's layout."""
    tps = image_processor.temporal_patch_size
    pixels, grids = [], []
    for frames in videos:
        frames = _pad_frames(frames, tps)
        # One temporal slice per frame; the grouping into temporal patches happens below.
        out = image_processor(
            list(frames), temporal_patch_size=1, size={"shortest_edge": min_pixels, "longest_edge": max_pixels},
            return_tensors="np",
        )
        _, grid_h, grid_w = (int(v) for v in out["image_grid_thw"][0])
        pixels.append(_group_temporal(out["pixel_values"], len(frames), tps))
        grids.append([len(frames) // tps, grid_h, grid_w])
    return {"pixel_values_videos": np.concatenate(pixels).astype(np.float32),
            "video_grid_thw": np.asarray(grids, dtype=np.int64)}


def _pad_frames(frames: np.ndarray, multiple: int) -> np.ndarray:
    """Repeat the last frame until the count divides into whole temporal patches."""
    missing = -len(frames) % multiple
    if missing:
        frames = np.concatenate([frames, np.repeat(frames[-1:], missing, axis=0)])
    return frames


def _group_temporal(per_frame: np.ndarray, n_frames: int, tps: int) -> np.ndarray:
    """(frames * patches, C * p * p) per-frame patches to (t * patches, C * tps * p * p).

    Each frame's patches are already in merge order with channel-major (C, p, p) features; the
    vision tower wants, per patch, the channels outermost and the `tps` frames of a temporal patch
    next: (C, tps, p, p).
    """
    patches = per_frame.shape[0] // n_frames
    channels = 3
    pp = per_frame.shape[1] // channels
    x = per_frame.reshape(n_frames // tps, tps, patches, channels, pp)
    x = x.transpose(0, 2, 3, 1, 4)  # (t, patches, C, tps, p*p)
    return x.reshape(n_frames // tps * patches, channels * tps * pp)


def _as_video_list(videos) -> list:
    """One video (a path or a list of frames) or a list of them, as a list of videos."""
    if isinstance(videos, (str, os.PathLike)) or (isinstance(videos, np.ndarray) and videos.ndim == 4):
        return [videos]
    if isinstance(videos, (list, tuple)) and videos and _is_frame(videos[0]):
        return [videos]
    return list(videos)


def _is_frame(item) -> bool:
    from PIL import Image

    return isinstance(item, Image.Image) or (isinstance(item, np.ndarray) and item.ndim == 3)
