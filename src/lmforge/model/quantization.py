"""Quantized models: on-the-fly quantization (`quantization_bit`) and checkpoints quantized beforehand.

On the fly, `quantization_method: bnb` quantizes the weights to 4 bits (NF4 or FP4, QLoRA) or 8 bits
with bitsandbytes, on a CUDA GPU or on the CPU. A checkpoint whose config.json carries a
`quantization_config` (GPTQ, AWQ, bitsandbytes, ...) is loaded as it was quantized, and
`quantization_bit` is ignored for it. Every case that cannot run here is one clear error, before the
weights load, naming what to install or to change.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import ModelArguments

logger = get_logger(__name__)

METHODS = ("bnb", "hqq", "eetq")
QUANT_TYPES = ("nf4", "fp4")

# What transformers needs to load a checkpoint quantized beforehand, by its config's `quant_method`.
# transformers 5 runs GPTQ and AWQ checkpoints through gptqmodel (on the CPU too); GPTQ also needs optimum.
PREQUANTIZED_PACKAGES: dict[str, tuple[str, ...]] = {
    "gptq": ("gptqmodel", "optimum"),
    "awq": ("gptqmodel",),
    "bitsandbytes": ("bitsandbytes",),
    "aqlm": ("aqlm",),
    "hqq": ("hqq",),
    "eetq": ("kernels",),
    "quanto": ("optimum.quanto",),
    "torchao": ("torchao",),
}
# The methods whose packages the `quantization` extra installs.
EXTRA_METHODS = ("gptq", "awq", "bitsandbytes")
# pip's names where they differ from the module's.
PIP_NAMES = {"optimum.quanto": "optimum-quanto"}
# What to install where a version is pinned: the `gptq` extra's gptqmodel (7.7 needs a newer torch).
PIP_SPECS = {"gptqmodel": "gptqmodel==7.6.0"}


def quiet_gptqmodel() -> None:
    """Import gptqmodel (when installed) with its start-up output kept off the console.

    peft imports it whenever it builds LoRA layers, and transformers when it loads a GPTQ/AWQ checkpoint;
    its first import prints a banner and notes to stdout, which would land in `lmforge chat`'s answers.
    Importing it here first, quietly, leaves nothing for those imports to print; its logger then says
    only warnings.
    """
    import sys

    if "gptqmodel" in sys.modules or importlib.util.find_spec("gptqmodel") is None:
        return
    import contextlib
    import io
    import logging

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gptqmodel  # noqa: F401
    logging.getLogger("logbar").setLevel(logging.WARNING)


def _missing(modules) -> list[str]:
    missing = []
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a dotted name whose parent package is absent
            found = False
        if not found:
            missing.append(PIP_NAMES.get(module, module))
    return missing


def prequantized_method(config) -> str | None:
    """The `quant_method` of a checkpoint quantized beforehand (from its config), else None."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else getattr(quant, "quant_method", None)
    method = getattr(method, "value", method)  # transformers' QuantizationMethod enum
    return str(method).lower() if method else "unknown"


def check_prequantized(method: str, path: str, model_args: ModelArguments) -> None:
    """Refuse a quantized checkpoint whose libraries are missing, naming them; note an ignored quantization_bit."""
    missing = _missing(PREQUANTIZED_PACKAGES.get(method, ()))
    if missing:
        install = f"pip install {' '.join(PIP_SPECS.get(name, name) for name in missing)}"
        if method in EXTRA_METHODS:
            extra = "quantization" if method == "bitsandbytes" else "gptq"
            install = f'pip install "lmforge[{extra}]" (or {install})'
        raise UserError(
            f"'{path}' is a checkpoint quantized with {method.upper()} (its config.json has a quantization_config), and "
            f"loading it needs {' and '.join(missing)}: {install}"
        )
    if model_args.quantization_bit is not None:
        logger.warning(f"'{path}' is already quantized ({method}); quantization_bit={model_args.quantization_bit} "
                       "is ignored.")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def quantization_config(model_args: ModelArguments, compute_dtype):
    """The transformers quantization config of `quantization_bit` / `quantization_method`, or None.

    A clear error where the method cannot run on this machine or its package is missing.
    """
    bits, method = model_args.quantization_bit, model_args.quantization_method
    if bits is None:
        return None
    if method == "eetq":
        if not _cuda():
            raise UserError("quantization_method eetq needs a CUDA GPU (its int8 kernels run on CUDA only), and this "
                            "machine has none. Use quantization_method: bnb, which also runs on the CPU.")
        if bits != 8:
            raise UserError(f"quantization_method eetq quantizes to 8 bits only; set quantization_bit: 8 (it is {bits}).")
        missing = _missing(("kernels",))
        if missing:
            raise UserError("quantization_method eetq needs the kernels package: pip install kernels")
        from transformers import EetqConfig

        return EetqConfig("int8")
    if method == "hqq":
        if not _cuda():
            raise UserError("quantization_method hqq needs a CUDA GPU: transformers refuses to place HQQ layers on "
                            "the CPU. Use quantization_method: bnb, which also runs on the CPU.")
        if _missing(("hqq",)):
            raise UserError("quantization_method hqq needs the hqq package: pip install hqq")
        from transformers import HqqConfig

        return HqqConfig(nbits=bits, group_size=64)
    if _missing(("bitsandbytes",)):
        raise UserError(f"quantization_bit={bits} needs bitsandbytes: pip install 'lmforge[quantization]' "
                        "(or pip install bitsandbytes)")
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=model_args.double_quantization,
        bnb_4bit_quant_type=model_args.quantization_type,
        # Packed 4-bit weights stored in the compute dtype can be sharded with the other weights (FSDP).
        bnb_4bit_quant_storage=compute_dtype,
    )


def quantized_device_map(model_args: ModelArguments, trainable: bool):
    """Where a quantized model's weights go: this process's GPU (each DDP rank its own), or the CPU.

    `quantization_device_map: auto` spreads inference over the GPUs and the CPU (accelerate's map).
    """
    if model_args.quantization_device_map == "auto" and not trainable:
        return "auto"
    if _cuda():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return {"": "cpu"}


def is_quantized(model) -> bool:
    """Whether `model` (or the model under a PEFT wrapper) holds quantized weights."""
    base = getattr(model, "get_base_model", lambda: model)()
    return bool(getattr(base, "is_quantized", False) or getattr(base, "quantization_method", None)
                or getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def describe(model) -> str:
    """The quantization of a loaded model in words ('bitsandbytes 4-bit'), for messages."""
    base = getattr(model, "get_base_model", lambda: model)()
    method = getattr(base, "quantization_method", None)
    method = str(getattr(method, "value", method) or "quantized")
    if getattr(base, "is_loaded_in_4bit", False):
        return f"{method} 4-bit"
    if getattr(base, "is_loaded_in_8bit", False):
        return f"{method} 8-bit"
    quant = getattr(getattr(base, "config", None), "quantization_config", None)
    bits = quant.get("bits") if isinstance(quant, dict) else getattr(quant, "bits", None)
    return f"{method} {bits}-bit" if isinstance(bits, int) else method  # GPTQ, AWQ: from the checkpoint's config


def prepare_for_training(model) -> None:
    """Make a quantized model safe to train adapters on: frozen base weights, and no CPU inference repacking.

    On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for a faster inference
    kernel the first time it runs in eval mode without gradients (an evaluation during training). That
    kernel has no backward, so every gradient through the layer is wrong from then on, silently. The
    repacking is switched off on every 4-bit layer, whatever the CPU, before training starts.

    gptqmodel's CPU layers of GPTQ and AWQ checkpoints (TorchAtenLinear, TorchAtenAwqLinear, TorchFused*)
    do the same on their first forward: run in eval mode without gradients, a layer repacks its weights for
    aten's int4 kernel and sets `linear_mode` to "inference" for good; that kernel runs under no_grad, and
    the next LoRA backward fails ("element 0 of tensors does not require grad"). Set to "train" before any
    forward, the layer keeps dequantizing its weights, in training and in evaluation alike.
    """
    for param in model.parameters():
        param.requires_grad_(False)
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
        if _is_gptqmodel_layer(module):
            mode = getattr(module.linear_mode, "value", module.linear_mode)
            if mode is None:
                module.linear_mode = "train"  # == gptqmodel's LinearMode.TRAIN, a str enum
            elif mode != "train":
                raise UserError(f"This {describe(model)} model already ran inference (its {type(module).__name__} "
                                "layers repacked their weights for the CPU's int4 kernel, which has no backward); "
                                "load it afresh to train adapters on it.")


def _is_gptqmodel_layer(module) -> bool:
    """A quantized layer of gptqmodel that chooses its training or inference path on its first forward."""
    return type(module).__module__.startswith("gptqmodel.") and hasattr(module, "linear_mode")


def release_checkpoint_file(model) -> None:
    """Copy a CPU model's unquantized weights (embeddings, norms) out of the memory-mapped checkpoint.

    transformers leaves the weights that need no conversion as views of the mapped safetensors file, which
    keeps every page of the file mapped: the full-precision weights stay counted in the process's memory after
    they were quantized. Once nothing points into the file, the mapping closes.
    """
    import gc

    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and type(tensor).__name__ not in ("Params4bit", "Int8Params"):
            tensor.data = tensor.data.clone()
    gc.collect()


def quiet_bitsandbytes() -> None:
    """bitsandbytes' 8-bit layers log a warning on every call when the inputs are not float16 (CPU: float32)."""
    import logging

    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
