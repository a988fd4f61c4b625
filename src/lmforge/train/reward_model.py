"""The reward model of stage ppo, per `reward_model_type`: one score per rollout (prompt + sampled answer).

- `lora`: `reward_model` is the output_dir of a LoRA rm run on the policy's base model. Its adapter
  is loaded into the policy as a second, frozen adapter named "reward", and its value head beside;
  a batch is scored by the policy's own forward with `adapter_names=["reward", ...]` (PEFT's per-row
  adapter choice), so the base weights are in memory once for policy, reference and reward, and the
  trained adapter's state is never switched back and forth.
- `full`: `reward_model` is a full rm folder (weights + value head), or a base model whose rm adapters
  are `reward_model_adapters` (merged in; the last one holds the value head): a second model.
- `api`: `reward_model` is a URL. Each rollout is decoded to text (special tokens kept) and the texts
  are posted as `{"model": "model", "messages": [text, ...]}`; the answer is `{"scores": [...]}`, one
  number per text (LLaMA-Factory's protocol).

The model types read the policy's token ids, so they must share its architecture; a folder that is
not an rm output, or one of another architecture, is refused with one line naming the fix.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.errors import UserError
from lmforge.model.resolve import read_run_file
from lmforge.train.value_head import VALUE_HEAD_FILE, hidden_size, last_token_index, load_value_head, position_ids
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

REWARD_ADAPTER = "reward"
API_TIMEOUT_SECONDS = 300


def _model_type(folder: str | Path) -> str | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError):
        return None


def check_reward_folder(path: str, kind: str) -> None:
    """Refuse, in one line with the fix, a `reward_model` folder that is not a `kind` (lora, full) rm output."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"reward_model '{path}' does not exist. Point it at the output_dir of a reward model run "
                        "(lmforge train ... stage=rm).")
    run = read_run_file(folder) or {}
    if run.get("stage") not in (None, "rm"):
        raise UserError(f"reward_model '{path}' is a stage {run['stage']} run, not a reward model; train one with "
                        "stage: rm and point reward_model at its output_dir.")
    if not (folder / VALUE_HEAD_FILE).is_file():
        raise UserError(f"reward_model '{path}' is not a reward model: it has no {VALUE_HEAD_FILE}. Train one with "
                        "stage: rm and point reward_model at its output_dir.")
    has_adapter, has_model = (folder / "adapter_config.json").is_file(), (folder / "config.json").is_file()
    if kind == "lora" and not has_adapter:
        raise UserError(f"reward_model '{path}' is a full reward model (no adapter_config.json); set "
                        "reward_model_type: full.")
    if kind == "full" and not has_model:
        raise UserError(f"reward_model '{path}' is a LoRA reward model (no config.json); set reward_model_type: "
                        "lora, or reward_model to its base model and reward_model_adapters to this folder.")


def _check_architecture(path: str, reward_type: str | None, policy_config, where: str) -> None:
    policy_type = getattr(policy_config, "model_type", None)
    if reward_type and policy_type and reward_type != policy_type:
        raise UserError(f"reward_model '{path}' {where} a {reward_type} model, but the policy is a {policy_type} "
                        "model; the reward model reads the policy's tokens, so it must have the policy's "
                        "architecture and tokenizer.")


def _check_head(path: str, head, policy_config) -> None:
    width = head.summary.weight.shape[-1]
    if width != hidden_size(policy_config):
        raise UserError(f"reward_model '{path}' has a value head of width {width}, but the policy's hidden size is "
                        f"{hidden_size(policy_config)}: it was trained on another model.")


def _warn_other_template(path: str, cfg: RunConfig, template_name: str | None) -> None:
    recorded = (read_run_file(path) or {}).get("template")
    if recorded and template_name and recorded != template_name:
        logger.warning(f"reward_model '{path}' was trained with template {recorded}, the policy uses {template_name}: "
                       "its scores may not carry over.")


def _merged_base(model: str, adapters, create_new_adapter: bool) -> list[str]:
    """The model a new LoRA adapter is trained on: the base and the adapters merged into it (absolute)."""
    from lmforge.model.resolve import absolute_if_local

    adapters = list(adapters or [])
    merged = adapters if create_new_adapter else adapters[:-1]  # otherwise the last one keeps training
    return [absolute_if_local(p) for p in (model, *merged)]


def _warn_other_base(path: str, cfg: RunConfig) -> None:
    """The rm adapter is applied to the policy's base: say so when the rm was trained on another one."""
    run = read_run_file(path)
    if not run:
        return
    trained = _merged_base(run["model_name_or_path"], run.get("adapter_name_or_path"),
                           run.get("config", {}).get("create_new_adapter", False))
    policy = _merged_base(cfg.model.model_name_or_path, cfg.model.adapter_name_or_path,
                          cfg.finetune.create_new_adapter)
    if trained != policy:
        logger.warning(f"reward_model '{path}' was trained on {' + '.join(trained)}, but the policy's base is "
                       f"{' + '.join(policy)}: its adapter is applied to a model it was not trained on. Train the "
                       "reward model with the policy's model_name_or_path, adapter_name_or_path and "
                       "create_new_adapter.")


class AdapterReward:
    """reward_model_type lora: the rm adapter inside the policy, selected per row."""

    def __init__(self, peft_model, head):
        self.model, self.head = peft_model, head

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()  # PEFT picks adapters per row only in inference mode
        try:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids(attention_mask), output_hidden_states=True, logits_to_keep=1,
                             use_cache=False, adapter_names=[REWARD_ADAPTER] * input_ids.shape[0])
        finally:
            self.model.train(was_training)
        values = self.head(out.hidden_states[-1])
        return values.gather(1, last_token_index(attention_mask).unsqueeze(1)).squeeze(1).float()


class ModelReward:
    """reward_model_type full: a separate, frozen model with its value head."""

    def __init__(self, model, head):
        self.model, self.head = model, head

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        device = self.head.summary.weight.device
        ids, mask = input_ids.to(device), attention_mask.to(device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                         output_hidden_states=True, logits_to_keep=1, use_cache=False)
        values = self.head(out.hidden_states[-1])
        return values.gather(1, last_token_index(mask).unsqueeze(1)).squeeze(1).float().to(input_ids.device)


class ApiReward:
    """reward_model_type api: POST the decoded rollouts, read one score per text."""

    def __init__(self, url: str, tokenizer):
        self.url, self.tokenizer = url, tokenizer

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        import urllib.error
        import urllib.request

        texts = [self.tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=False)
                 for ids, mask in zip(input_ids, attention_mask)]
        request = urllib.request.Request(self.url, data=json.dumps({"model": "model", "messages": texts}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=API_TIMEOUT_SECONDS) as response:
                body = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as err:
            raise UserError(f"reward_model API {self.url} answered HTTP {err.code} {err.reason}.") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise UserError(f"reward_model API {self.url} cannot be reached: {reason}.") from None
        try:
            scores = json.loads(body)["scores"]
            if len(scores) != len(texts):
                raise ValueError
            return torch.tensor([float(s) for s in scores], dtype=torch.float32, device=input_ids.device)
        except (ValueError, TypeError, KeyError, IndexError):
            raise UserError(f"reward_model API {self.url} answered {body[:200]!r}; expected JSON "
                            f'{{"scores": [...]}} with one number for each of the {len(texts)} texts.') from None


def _adapters(cfg: RunConfig) -> list[str]:
    return [a.strip() for a in (cfg.finetune.reward_model_adapters or "").split(",") if a.strip()]


def check_reward_model(cfg: RunConfig, policy_config):
    """Refuse, before anything heavy loads, a `reward_model` that cannot score the policy's rollouts; return
    its value head (None for an api reward model)."""
    ft = cfg.finetune
    path = ft.reward_model
    if ft.reward_model_type == "api":
        return None
    if ft.reward_model_type == "lora":
        check_reward_folder(path, "lora")
        from lmforge.model.adapters import read_adapter_config

        trained_on = read_adapter_config(path).get("base_model_name_or_path") or ""
        if trained_on and Path(trained_on).is_dir():
            _check_architecture(path, _model_type(trained_on), policy_config, "was trained on")
        head_folder = path
    else:
        adapters = _adapters(cfg)
        if adapters:
            if not Path(path).exists() and path.startswith((".", "/", "~")):
                raise UserError(f"reward_model '{path}' does not exist: with reward_model_adapters it is their base "
                                "model.")
            check_reward_folder(adapters[-1], "lora")
        else:
            check_reward_folder(path, "full")
        if Path(path).is_dir():
            _check_architecture(path, _model_type(path), policy_config, "is")
        head_folder = adapters[-1] if adapters else path
    head = load_value_head(head_folder)
    _check_head(head_folder, head, policy_config)
    return head


def attach_adapter_reward(cfg: RunConfig, peft_model, template_name: str | None) -> AdapterReward:
    """Load the rm LoRA run `reward_model` into the policy as the frozen adapter "reward"."""
    path = cfg.finetune.reward_model
    head = check_reward_model(cfg, peft_model.config)
    _warn_other_base(path, cfg)
    _warn_other_template(path, cfg, template_name)
    try:
        peft_model.load_adapter(path, adapter_name=REWARD_ADAPTER, is_trainable=False)
    except (RuntimeError, ValueError, KeyError, OSError) as err:
        raise UserError(f"reward_model '{path}' does not fit the policy model '{cfg.model.model_name_or_path}': "
                        f"{str(err).splitlines()[0]}") from None
    device = next(peft_model.parameters()).device
    logger.info(f"Reward model: the LoRA adapter and value head of {path}")
    return AdapterReward(peft_model, head.to(device))


def load_full_reward(cfg: RunConfig, tokenizer, policy_config, device, dtype, template_name: str | None) -> ModelReward:
    """Load `reward_model` (+ `reward_model_adapters`, merged) as its own frozen model with its value head."""
    from lmforge.model.adapters import load_adapters
    from lmforge.model.loader import load_model
    from lmforge.model.tokenizer import with_model_path

    ft = cfg.finetune
    path, adapters = ft.reward_model, _adapters(cfg)
    head = check_reward_model(dataclasses.replace(cfg, finetune=dataclasses.replace(ft, reward_model_type="full")),
                              policy_config)
    _warn_other_template(adapters[-1] if adapters else path, cfg, template_name)
    model_args = dataclasses.replace(with_model_path(cfg.model, path), quantization_bit=ft.reward_model_quantization_bit)
    model = load_model(model_args, tokenizer, dtype, trainable=False)
    _check_architecture(path, getattr(model.config, "model_type", None), policy_config, "is")
    model = load_adapters(model, adapters, path, merge=True)
    if ft.reward_model_quantization_bit is None:
        model.to(device)
    logger.info(f"Reward model: {path}" + (f" with {', '.join(adapters)}" if adapters else ""))
    return ModelReward(model, head.to(next(model.parameters()).device))


def load_reward(cfg: RunConfig, peft_model, tokenizer, device, dtype, template_name: str | None):
    """The scorer of `reward_model_type`: called with (input_ids, attention_mask), returns one float per row."""
    kind = cfg.finetune.reward_model_type
    if kind == "api":
        logger.info(f"Reward model: the API at {cfg.finetune.reward_model}")
        return ApiReward(cfg.finetune.reward_model, tokenizer)
    if kind == "lora":
        return attach_adapter_reward(cfg, peft_model, template_name)
    return load_full_reward(cfg, tokenizer, peft_model.config, device, dtype, template_name)
