"""The optimizer a run's extras ask for: GaLore, APOLLO, BAdam, Adam-mini or Muon.

GaLore and APOLLO are transformers' own optimizers: `training_args_overrides` only fills `optim`,
`optim_target_modules` and `optim_args`. BAdam, Adam-mini and Muon are built here by `create`, which the
trainer calls in place of its default AdamW.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

import torch

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

# switch -> (importable module, lmforge extra that installs it). Muon is torch's own.
_PACKAGES = {
    "use_galore": ("galore_torch", "galore"),
    "use_apollo": ("apollo_torch", "apollo"),
    "use_badam": ("badam", "badam"),
    "use_adam_mini": ("adam_mini", "adam-mini"),
}


def _installed(module: str) -> bool:
    # sys.modules first: a module set to None there is one Python treats as absent.
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check(cfg: RunConfig) -> None:
    """Fail in one line when the optimizer the run asks for cannot be built here."""
    ft = cfg.finetune
    for switch, (module, extra) in _PACKAGES.items():
        if getattr(ft, switch) and not _installed(module):
            raise UserError(f'{switch} needs the {extra} extra: pip install "lmforge[{extra}]"')
    if ft.use_muon and not hasattr(torch.optim, "Muon"):
        raise UserError(f"use_muon needs torch.optim.Muon (torch 2.9 or newer); this is torch {torch.__version__}.")


def training_args_overrides(cfg: RunConfig) -> dict:
    """TrainingArguments settings for GaLore and APOLLO (transformers builds those optimizers); {} otherwise.

    `check(cfg)` has run before (train/run.py), so the packages are there."""
    ft = cfg.finetune
    if ft.use_galore:
        name = "galore_adamw_layerwise" if ft.galore_layerwise else "galore_adamw"
        targets, options = ft.galore_target, dict(
            rank=ft.galore_rank, update_proj_gap=ft.galore_update_interval, scale=ft.galore_scale,
            proj_type=ft.galore_proj_type)
    elif ft.use_apollo:
        name = "apollo_adamw_layerwise" if ft.apollo_layerwise else "apollo_adamw"
        # scale_front is no optim_args key of transformers: `create` sets it on the optimizer.
        targets, options = ft.apollo_target, dict(
            rank=ft.apollo_rank, update_proj_gap=ft.apollo_update_interval, scale=ft.apollo_scale,
            proj=ft.apollo_proj, proj_type=ft.apollo_proj_type, scale_type=ft.apollo_scale_type)
    else:
        return {}
    return {"optim": name, "optim_target_modules": _target_modules(targets),
            "optim_args": ",".join(f"{key}={value}" for key, value in options.items())}


def _target_modules(targets: list[str]) -> list[str] | str:
    if [t.strip() for t in targets] != ["all"]:
        return [t.strip() for t in targets]
    # "all" must be known before the model loads: a regex transformers matches against every module name (it
    # keeps the Linear ones), leaving out the output head under lora_target's own head names.
    from lmforge.model.adapters import HEAD_NAMES

    return rf"(?!(?:.*\.)?(?:{'|'.join(HEAD_NAMES)})$).*"


def builds_own(ft) -> bool:
    """Whether `create` replaces the Trainer's optimizer for these finetuning settings."""
    if ft is None:
        return False
    return bool(ft.use_badam or ft.use_adam_mini or ft.use_muon or (ft.use_apollo and ft.apollo_scale_front))


def create(trainer, model):
    """The optimizer for `model`, with the trainer's learning rate, weight decay, betas and epsilon."""
    ft = trainer.finetuning_args
    if ft.use_badam:
        return _badam(trainer, model)
    if ft.use_adam_mini:
        return _adam_mini(trainer, model)
    if ft.use_muon:
        return _muon(trainer, model)
    return _apollo_scale_front(trainer, model)


def _trainable(model) -> list:
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def _decay_groups(trainer, model, named: list) -> list[dict]:
    """[decay, no-decay] groups in the Trainer's own split (no decay for biases and norms), without empty ones."""
    decay = set(trainer.get_decay_parameter_names(model))
    groups = [{"params": [p for n, p in named if n in decay], "weight_decay": trainer.args.weight_decay},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def _adam_kwargs(args) -> dict:
    return {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}


def _badam(trainer, model):
    from badam import BlockOptimizer, BlockOptimizerRatio

    ft, args = trainer.finetuning_args, trainer.args
    if ft.badam_mode == "ratio":
        from types import MethodType

        from badam import clip_grad_norm_old_version

        named = list(model.named_parameters())  # badam switches the embedding and the head off itself
        names = [n for n, _ in named]
        # Ratio mode turns the gradients sparse, which torch's fused clip_grad_norm_ refuses: badam's own
        # clipping handles them.
        trainer.accelerator.clip_grad_norm_ = MethodType(clip_grad_norm_old_version, trainer.accelerator)
        kwargs = _adam_kwargs(args)
        return BlockOptimizerRatio(
            param_groups=_decay_groups(trainer, model, _trainable(model)), named_parameters_list=named,
            update_ratio=ft.badam_update_ratio, mask_mode=ft.badam_mask_mode, verbose=ft.badam_verbose,
            lr=kwargs["lr"], betas=kwargs["betas"], eps=kwargs["eps"],
            # It looks the embedding and the head up by name; a model without one (a tied head) must not ask.
            include_embedding=not any("embed" in n for n in names),
            include_lm_head=not any("lm_head" in n for n in names))
    # Layer mode: the blocks are the decoder layers among the parameters the finetuning_type trains.
    named = _trainable(model)
    # badam gives both of its groups the base optimizer's default weight decay: the Trainer's weight_decay.
    base = torch.optim.AdamW(_decay_groups(trainer, model, named), weight_decay=args.weight_decay,
                             **_adam_kwargs(args))
    # -1 means "never switch"; badam would read it as "switch every step" (n % -1 == 0).
    every = sys.maxsize if ft.badam_switch_interval < 0 else ft.badam_switch_interval
    return BlockOptimizer(base_optimizer=base, named_parameters_list=named, block_prefix_list=None,
                          switch_block_every=every, start_block=ft.badam_start_block, switch_mode=ft.badam_switch_mode,
                          verbose=ft.badam_verbose)


def _adam_mini(trainer, model):
    from adam_mini import Adam_mini

    args = trainer.args
    config = getattr(model.config, "text_config", None) or model.config
    heads = config.num_attention_heads
    optimizer = Adam_mini(named_parameters=_trainable(model), weight_decay=args.weight_decay, dim=config.hidden_size,
                          n_heads=heads, n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                          verbose=False, **_adam_kwargs(args))
    # Adam-mini decides weight decay by name ("norm", "bias"); the Trainer's own split wins.
    decay_names = set(trainer.get_decay_parameter_names(model))
    decay = {id(p) for n, p in model.named_parameters() if n in decay_names}
    for group in optimizer.param_groups:
        if id(group["params"][0]) not in decay:
            group["weight_decay"] = 0.0
    return optimizer


def muon_parameter_names(model) -> set[str]:
    """The 2-D weights inside the repeated blocks (a ModuleList's layers): Muon's. Embeddings stay with AdamW."""
    names = set()
    for list_name, layers in model.named_modules():
        if not isinstance(layers, torch.nn.ModuleList):
            continue
        for module_name, module in layers.named_modules(prefix=list_name):
            if isinstance(module, torch.nn.Embedding):
                continue
            for name, param in module.named_parameters(prefix=module_name, recurse=False):
                if param.ndim == 2:
                    names.add(name)
    return names


def _muon(trainer, model):
    named = _trainable(model)
    in_layers = muon_parameter_names(model)
    parts = {}
    muon_groups = _decay_groups(trainer, model, [(n, p) for n, p in named if n in in_layers])
    if muon_groups:
        # match_rms_adamw scales each update to AdamW's size, so one learning rate serves both parts.
        parts["muon"] = torch.optim.Muon(muon_groups, lr=trainer.args.learning_rate, adjust_lr_fn="match_rms_adamw")
    adamw_groups = _decay_groups(trainer, model, [(n, p) for n, p in named if n not in in_layers])
    if adamw_groups:
        parts["adamw"] = torch.optim.AdamW(adamw_groups, **_adam_kwargs(trainer.args))
    return MuonWithAdamW(parts)


def _apollo_scale_front(trainer, model):
    # transformers builds APOLLO without apollo_scale_front (no optim_args key for it): build it the same way,
    # then set the flag on each APOLLO optimizer (one per parameter when layer-wise).
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    params = kwargs.pop("optimizer_dict", None) or kwargs.pop("params")
    kwargs.pop("params", None)
    optimizer = optimizer_cls(params, **kwargs)
    for part in (getattr(optimizer, "optimizer_dict", None) or {None: optimizer}).values():
        part.scale_front = True
    return optimizer


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer for the Trainer made of Muon (the layers' matrices) and AdamW (the rest).

    `param_groups` holds the parts' own group dicts, so the LR scheduler's changes reach them; `state_dict`
    keeps each part's state under its name, so a checkpoint resumes both.
    """

    def __init__(self, parts: dict):
        if not parts:
            raise UserError("use_muon: the model has no trainable parameters.")
        self.parts = parts
        super().__init__([group for part in parts.values() for group in part.param_groups], {})

    def _relink(self) -> None:
        # A part's load_state_dict makes new group dicts; point ours at them (in place: others hold this list).
        self.param_groups[:] = [group for part in self.parts.values() for group in part.param_groups]

    @property
    def state(self):
        merged = {}
        for part in getattr(self, "parts", {}).values():
            merged.update(part.state)
        return merged

    @state.setter
    def state(self, value):
        pass  # torch's Optimizer.__init__ assigns an empty state; the parts keep the real one

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts.values():
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts.values():
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise UserError(f"The checkpoint's optimizer has parts {sorted(state_dict)}, this run's "
                            f"{sorted(self.parts)}; resume with the same use_muon and finetuning settings.")
        for name, part in self.parts.items():
            part.load_state_dict(state_dict[name])
        self._relink()
