"""Training extras under LLaMA-Factory's key names: OFT, PiSSA, the alternative optimizers, LLaMA Pro and the
SFT loss variants. `FinetuningArguments` inherits these fields; see docs/training-extras.md."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmforge.config.readers import MODEL, TRAINING

GALORE_PROJ_TYPES = ("std", "reverse_std", "right", "left", "full")
APOLLO_PROJS = ("svd", "random")
APOLLO_PROJ_TYPES = ("std", "right", "left")
APOLLO_SCALE_TYPES = ("channel", "tensor")
BADAM_MODES = ("layer", "ratio")
BADAM_SWITCH_MODES = ("ascending", "descending", "random", "fixed")
BADAM_MASK_MODES = ("adjacent", "scatter")


def _train(help_text: str, default=None, **kwargs):
    return field(default=default, metadata={"help": help_text, "read_by": (TRAINING,)}, **kwargs)


@dataclass
class ExtrasArguments:
    """OFT, PiSSA, GaLore, APOLLO, BAdam, Adam-mini, Muon, LLaMA Pro and the DFT/ASFT/EAFT losses."""

    # OFT (finetuning_type: oft), through peft's OFTConfig.
    oft_rank: int = field(default=0, metadata={
        "help": "OFT: number of orthogonal blocks per layer (0: derived from oft_block_size).",
        "read_by": (MODEL, TRAINING)})
    oft_block_size: int = field(default=32, metadata={
        "help": "OFT: size of each orthogonal block (0: derived from oft_rank); one of the two must be 0.",
        "read_by": (MODEL, TRAINING)})
    oft_target: list[str] = field(default_factory=lambda: ["all"], metadata={
        "help": "OFT: target modules, comma-separated, or all (every linear layer but the output head).",
        "read_by": (MODEL, TRAINING)})
    module_dropout: float = field(default=0.0, metadata={
        "help": "OFT: probability of dropping a whole block's rotation during training.", "read_by": (MODEL, TRAINING)})
    # PiSSA: LoRA initialised from the principal singular vectors of each weight.
    pissa_init: bool = _train("LoRA: initialise the adapter with PiSSA (principal singular values and vectors); "
                              "the base weights keep the residual.", False)
    pissa_iter: int = _train("PiSSA: fast-SVD iterations (-1: an exact SVD).", 16)
    pissa_convert: bool = _train("PiSSA: save the trained adapter converted to a plain LoRA that applies to the "
                                 "original base model (the raw PiSSA adapter goes to pissa_backup/).", False)
    # GaLore: gradient low-rank projection (full or freeze training), transformers' galore optimizers.
    use_galore: bool = _train("Train with GaLore (gradient low-rank projection); needs the galore extra.", False)
    galore_target: list[str] = field(default_factory=lambda: ["all"], metadata={
        "help": "GaLore: modules whose gradients are projected, comma-separated, or all (every linear layer).",
        "read_by": (TRAINING,)})
    galore_rank: int = _train("GaLore: rank of the projection.", 16)
    galore_update_interval: int = _train("GaLore: steps between updates of the projection.", 200)
    galore_scale: float = _train("GaLore: scale of the projected update.", 2.0)
    galore_proj_type: str = _train("GaLore: projection type: std, reverse_std, right, left or full.", "std")
    galore_layerwise: bool = _train("GaLore: update layer by layer during backward (less memory; needs "
                                    "gradient_accumulation_steps 1).", False)
    # APOLLO: approximated gradient scaling, transformers' apollo optimizers.
    use_apollo: bool = _train("Train with APOLLO (low-rank gradient scaling); needs the apollo extra.", False)
    apollo_target: list[str] = field(default_factory=lambda: ["all"], metadata={
        "help": "APOLLO: modules it applies to, comma-separated, or all (every linear layer).", "read_by": (TRAINING,)})
    apollo_rank: int = _train("APOLLO: rank of the projection.", 16)
    apollo_update_interval: int = _train("APOLLO: steps between updates of the projection.", 200)
    apollo_scale: float = _train("APOLLO: scale of the update.", 32.0)
    apollo_proj: str = _train("APOLLO: projection: svd or random.", "random")
    apollo_proj_type: str = _train("APOLLO: projection type: std, right or left.", "std")
    apollo_scale_type: str = _train("APOLLO: scaling: channel or tensor.", "channel")
    apollo_layerwise: bool = _train("APOLLO: update layer by layer during backward (needs "
                                    "gradient_accumulation_steps 1).", False)
    apollo_scale_front: bool = _train("APOLLO: apply the norm-growth limiter before the gradient scaling.", False)
    # BAdam: block coordinate descent with Adam (full training).
    use_badam: bool = _train("Train with BAdam (one block of layers at a time); needs the badam extra.", False)
    badam_mode: str = _train("BAdam: layer (switch between layer blocks) or ratio (a random share of each weight).",
                             "layer")
    badam_start_block: int | None = _train("BAdam, layer mode: the block trained first (default: per switch mode).")
    badam_switch_mode: str = _train("BAdam, layer mode: order of the blocks: ascending, descending, random or fixed.",
                                    "ascending")
    badam_switch_interval: int = _train("BAdam, layer mode: steps per block (-1: never switch).", 50)
    badam_update_ratio: float = _train("BAdam, ratio mode: share of each weight updated.", 0.05)
    badam_mask_mode: str = _train("BAdam, ratio mode: adjacent or scatter choice of the updated entries.", "adjacent")
    badam_verbose: int = _train("BAdam: 0 quiet, 1 prints the active block, 2 also its parameters.", 0)
    # Other optimizers.
    use_adam_mini: bool = _train("Train with Adam-mini (one second-moment value per block); needs the adam-mini "
                                 "extra.", False)
    use_muon: bool = _train("Train with Muon (orthogonalised momentum) for the 2-D weights of the layers and AdamW "
                            "for the rest (torch.optim.Muon).", False)
    # LLaMA Pro: train only the blocks added by `lmforge expand-blocks`.
    use_llama_pro: bool = _train("LLaMA Pro: train only the expanded blocks (freeze_trainable_layers of them, evenly "
                                 "spaced) of a model made by `lmforge expand-blocks`; freeze or lora.", False)
    # SFT loss variants.
    use_dft_loss: bool = _train("SFT: Dynamic Fine-Tuning loss, each token's cross-entropy weighted by its "
                                "(detached) probability.", False)
    use_asft_loss: bool = _train("SFT: ASFT loss, the DFT loss plus asft_alpha x KL to the reference model (the base "
                                 "model without the adapter, or a frozen copy).", False)
    asft_alpha: float = _train("ASFT: weight of the KL term.", 0.1)
    use_eaft_loss: bool = _train("SFT: EAFT loss, each token's cross-entropy weighted by (its top-20 entropy / 3) "
                                 "to the power eaft_alpha.", False)
    eaft_alpha: float = _train("EAFT: power of the entropy weight.", 1.0)
