"""Pick the inference engine of `infer_backend`; each backend's module (and library) loads only when chosen."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmforge.chat.base import ChatEngine
    from lmforge.config import RunConfig


def create_engine(cfg: RunConfig) -> ChatEngine:
    """The inference engine of `infer_backend` (validated with the config): transformers, vLLM or llama.cpp."""
    if cfg.model.infer_backend == "llamacpp":
        from lmforge.chat.llamacpp_engine import LlamaCppEngine

        return LlamaCppEngine(cfg)
    if cfg.model.infer_backend == "vllm":
        from lmforge.chat.vllm_engine import VllmEngine

        return VllmEngine(cfg)
    from lmforge.chat.hf_engine import HFEngine

    return HFEngine(cfg)
