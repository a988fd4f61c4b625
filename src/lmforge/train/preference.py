"""The trainer of the dpo and kto stages: ForgeTrainer (atomic checkpoints, LoRA+) with a preference loss.

One forward pass scores a batch: for dpo the chosen and rejected sequences together (the pairwise
collator puts them in one batch), for kto the answers and their mismatched KL pairs. With
`trained_logits_only` (the default, where exact) the output head runs at the answer tokens only. The reference
model is `ref_model` when given, else the policy with its LoRA adapters switched off (no second copy
in memory); orpo and simpo need none. The logged metrics carry trl's names (rewards/chosen,
rewards/rejected, rewards/accuracies, rewards/margins, logps/chosen, logps/rejected; kl for kto).
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import nullcontext

import torch

from lmforge.train.pref_losses import AVERAGED, NO_REFERENCE, dpo_losses, kto_losses, sequence_logps
from lmforge.train.trainer import ForgeTrainer


class PreferenceTrainer(ForgeTrainer):
    """`stage` dpo or kto; `ref_model` None means: the policy without its adapters (LoRA) or no reference."""

    def __init__(self, *args, stage: str, ref_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        # The loss is a mean over pairs, not a sum over tokens: the Trainer must divide it by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.stage = stage
        if ref_model is not None:
            from lmforge.train.zero3 import frozen_for_zero3

            ref_model = frozen_for_zero3(ref_model, self.accelerator)
        self.ref_model = ref_model
        self._ref_head_ok: bool | None = None
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    # -- scoring -----------------------------------------------------------------------------------
    def _logps(self, model, batch: dict, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, labels = batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}labels"]
        if self._head_at_labels_only(model):
            from lmforge.train.loss import label_logps

            return label_logps(model, ids, mask, labels)
        return sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels)

    def _head_at_labels_only(self, model) -> bool:
        """`trained_logits_only` for the scores: the output head at the answer tokens only, where exact."""
        if not self._supervised_loss_on():
            return False
        if model is self.ref_model:
            from lmforge.train.loss import applies

            if self._ref_head_ok is None:
                self._ref_head_ok = applies(model)
            return self._ref_head_ok
        return True

    def _reference(self):
        """A context in which `model` is the reference, and that model (None when there is none)."""
        if self.ref_model is not None:
            return nullcontext(), self.ref_model
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "disable_adapter"):
            return model.disable_adapter(), self.model
        return nullcontext(), None

    def _reference_logps(self, batch: dict, prefix: str = "") -> torch.Tensor:
        context, model = self._reference()
        if model is None:
            raise RuntimeError("no reference model")  # validation and the workflow make sure there is one
        with torch.no_grad(), context:
            return self._logps(model, batch, prefix)[0]

    # -- losses ------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ft = self.finetuning_args
        split = "train" if model.training else "eval"
        if self.stage == "kto":
            loss, metrics = self._kto_loss(model, inputs, ft)
        else:
            loss, metrics = self._dpo_loss(model, inputs, ft)
        for key, value in metrics.items():
            self._metrics[split][key].append(value)
        return (loss, None) if return_outputs else loss

    def _dpo_loss(self, model, inputs, ft):
        # The reference first: its logits are gone before the policy's forward pass keeps its own for backward.
        ref = self._reference_logps(inputs) if ft.pref_loss not in NO_REFERENCE else None
        logps, lengths = self._logps(model, inputs)
        half = logps.shape[0] // 2
        averaged = ft.pref_loss in AVERAGED
        scores = logps / lengths.clamp(min=1) if averaged else logps
        chosen, rejected = scores[:half], scores[half:]
        ref_chosen = ref_rejected = None
        if ref is not None:
            if averaged:
                ref = ref / lengths.clamp(min=1)
            ref_chosen, ref_rejected = ref[:half], ref[half:]
        losses, chosen_rewards, rejected_rewards = dpo_losses(
            ft.pref_loss, chosen, rejected, ref_chosen, ref_rejected, ft.pref_beta, ft.dpo_label_smoothing,
            ft.simpo_gamma)
        if ft.pref_ftx > 1e-6:  # an SFT term on the chosen answers
            losses = losses + ft.pref_ftx * -(logps[:half] / lengths[:half].clamp(min=1))
        metrics = {
            "rewards/chosen": chosen_rewards.mean().item(),
            "rewards/rejected": rejected_rewards.mean().item(),
            "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
            "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
            "logps/chosen": logps[:half].detach().mean().item(),
            "logps/rejected": logps[half:].detach().mean().item(),
        }
        return losses.mean(), metrics

    def _kto_loss(self, model, inputs, ft):
        # Everything without gradients first, so its logits are freed before the policy's forward pass.
        ref_logps = self._reference_logps(inputs)
        ref_kl_logps = self._reference_logps(inputs, "kl_")
        with torch.no_grad():
            kl_logps = self._logps(model, inputs, "kl_")[0]
        logps, lengths = self._logps(model, inputs)
        desirable = inputs["kto_tags"].bool()
        losses, rewards, kl = kto_losses(logps, ref_logps, kl_logps, ref_kl_logps, desirable, ft.pref_beta,
                                         ft.kto_chosen_weight, ft.kto_rejected_weight)
        if ft.pref_ftx > 1e-6 and desirable.any():
            losses = losses + ft.pref_ftx * torch.where(desirable, -(logps / lengths.clamp(min=1)), 0.0)
        metrics = {"kl": kl.item()}
        if desirable.any():
            metrics["rewards/chosen"] = rewards[desirable].mean().item()
            metrics["logps/chosen"] = logps[desirable].detach().mean().item()
        if (~desirable).any():
            metrics["rewards/rejected"] = rewards[~desirable].mean().item()
            metrics["logps/rejected"] = logps[~desirable].detach().mean().item()
        if desirable.any() and (~desirable).any():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return losses.mean(), metrics

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict, *args, **kwargs) -> None:
        """Add the means of the stage's metrics since the last log (eval_ prefixed in evaluation)."""
        split = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        prefix = "eval_" if split == "eval" else ""
        for key, values in self._metrics[split].items():
            if values:
                logs[f"{prefix}{key}"] = round(sum(values) / len(values), 6)
        self._metrics[split].clear()
        super().log(logs, *args, **kwargs)
