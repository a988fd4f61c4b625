"""PPO (`stage: ppo`): a LoRA policy learns to write answers that a reward model scores highly.

trl 1.x has no PPO trainer any more; this is a compact one, following the algorithm of trl's former
PPOTrainer that LLaMA-Factory drives (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences"), with its defaults. Each PPO step:

1. Rollouts: `per_device_train_batch_size x gradient_accumulation_steps x ppo_buffer_size` prompts are
   answered by sampling from the policy (the generation settings: `max_new_tokens`, `temperature`,
   `top_p`, ...), each answer ending at its first stop token.
2. Scores: the reward model (`reward_model`, see `train/reward_model.py`) scores prompt + answer,
   optionally normalised by the running mean and std of all scores so far (`ppo_score_norm`).
3. Per-token rewards: -kl_coef x (log pi(token) - log ref(token)) for every answer token, plus the
   score on the last one. The reference is the policy with its adapter switched off.
   `ppo_whiten_rewards` rescales them to unit variance.
4. Advantages by GAE (gamma 1, lambda 0.95) from the critic's values (a value head on the policy's
   last hidden state, trained with it), whitened over the batch.
5. `ppo_epochs` passes over the rollouts in shuffled mini-batches of per_device_train_batch_size, an
   optimizer step every gradient_accumulation_steps of them: the clipped policy loss (clip 0.2) plus
   0.1 x the clipped value loss (clip 0.2).
6. The KL coefficient (0.2 at first) adapts so the measured KL moves toward `ppo_target`.

`trainer_log.jsonl` gets `loss`, `reward` (the mean raw score), `kl` (the mean summed KL of an answer)
and `ppo/*` details. The run folder is like sft's (the adapter, the tokenizer, the run file with
stage ppo, so `lmforge chat model_name_or_path=<run>` works) plus the critic's value_head.safetensors.
Checkpoints (`save_steps`) hold the adapter, the value head, the optimizer, scheduler, RNG and PPO
state; a run started again resumes from the newest one, as the other stages do.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lmforge.data.collator import pad_sequences
from lmforge.train.value_head import ValueHeadModel, load_value_head, save_value_head
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

# trl's PPOConfig defaults, which LLaMA-Factory keeps.
INIT_KL_COEF, KL_HORIZON = 0.2, 10000
GAMMA, LAM = 1.0, 0.95
CLIP_RANGE, CLIP_RANGE_VALUE, VF_COEF = 0.2, 0.2, 0.1
PPO_STATE_FILE = "ppo_state.json"


# -- the arithmetic ---------------------------------------------------------------------------------
def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Unit variance over the masked entries (and zero mean with `shift_mean`)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns) per token by generalised advantage estimation; padding carries zeros."""
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_values = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + GAMMA * next_values - values[:, t]
        last = delta + GAMMA * LAM * last
        advantages[:, t] = last
    return advantages, advantages + values


class AdaptiveKL:
    """Proportional control of the KL coefficient toward a target KL (Ziegler et al. 2019)."""

    def __init__(self, target: float, value: float = INIT_KL_COEF):
        self.target, self.value = target, value

    def update(self, kl: float, n_samples: int) -> None:
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_samples / KL_HORIZON


class RunningMoments:
    """Mean and standard deviation of every score seen so far (for `ppo_score_norm`)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    def update(self, xs: torch.Tensor) -> None:
        batch_mean, batch_var, n = xs.mean().item(), xs.var(unbiased=False).item(), xs.numel()
        delta, total = batch_mean - self.mean, self.count + n
        self.var = (self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(self.var * self.count / max(self.count - 1, 1))


# -- the trainer ------------------------------------------------------------------------------------
class PPOTrainer:
    """Rollouts, scores and PPO updates of one run; `train()` runs it and writes the run folder."""

    def __init__(self, cfg: RunConfig, args, model: ValueHeadModel, reward, tokenizer, template, dataset,
                 resume_from: str | None, callbacks=()):
        from transformers import Trainer, get_scheduler
        from transformers.integrations import get_reporting_integration_callbacks
        from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback, TrainerControl, TrainerState

        from lmforge.train.callbacks import LogCallback
        from lmforge.train.stop import StopOnSignal

        self.cfg, self.ft, self.model, self.reward, self.tokenizer = cfg, cfg.finetune, model, reward, tokenizer
        self.args = args
        self.device = args.device
        self.model.to(self.device)
        self._order: tuple[int, list[int]] = (-1, [])
        self.prompts = [list(ids) for ids in dataset["input_ids"]]
        self.mini_batch = args.per_device_train_batch_size
        self.batch_size = self.mini_batch * args.gradient_accumulation_steps * self.ft.ppo_buffer_size
        if args.max_steps > 0:
            total = args.max_steps
        else:
            total = math.ceil(args.num_train_epochs * len(self.prompts) / self.batch_size)
        self.stop_ids = torch.tensor(template.stop_token_ids(tokenizer), device=self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.generate_kwargs = {**cfg.generate.to_generate_kwargs(), "use_cache": True,
                                "eos_token_id": self.stop_ids.tolist(), "pad_token_id": self.pad_id}
        self.autocast_dtype = torch.bfloat16 if args.bf16 else None

        params = [p for p in model.parameters() if p.requires_grad]
        optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
        self.params = params
        self.optimizer = optim_cls([g for g in groups if g["params"]], **optim_kwargs)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total,
                                       scheduler_specific_kwargs=args.lr_scheduler_kwargs or {})
        self.kl_ctl = AdaptiveKL(self.ft.ppo_target)
        self.moments = RunningMoments()
        self.state = TrainerState(max_steps=total, logging_steps=args.logging_steps, save_steps=args.save_steps,
                                  train_batch_size=self.batch_size, num_train_epochs=math.ceil(
                                      total * self.batch_size / max(len(self.prompts), 1)))
        self.control = TrainerControl()
        self.stop = StopOnSignal()
        handlers = [DefaultFlowCallback(), LogCallback(cfg.train.output_dir, resuming=resume_from is not None),
                    self.stop, *callbacks]
        handlers += [c() for c in get_reporting_integration_callbacks(args.report_to)]
        self.callbacks = CallbackHandler(handlers, model, tokenizer, self.optimizer, self.scheduler)
        self.resume_from = resume_from

    # -- data ---------------------------------------------------------------------------------------
    def batch(self, step: int) -> list[list[int]]:
        """The prompts of PPO step `step`: consecutive slices of a stream of seeded shuffles, one per epoch,
        so a resumed run gets the same prompts as one never interrupted."""
        n, start = len(self.prompts), step * self.batch_size
        out = []
        for position in range(start, start + self.batch_size):
            epoch, index = divmod(position, n)
            if self._order[0] != epoch:
                generator = torch.Generator().manual_seed(self.args.seed + epoch)
                order = list(range(n)) if self.ft.disable_shuffling else torch.randperm(n, generator=generator).tolist()
                self._order = (epoch, order)
            out.append(self.prompts[self._order[1][index]])
        return out

    def pack(self, queries, responses) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[left-padded prompts | right-padded answers]: (input_ids, attention_mask, answer mask)."""
        q_ids = pad_sequences(queries, self.pad_id, "left")
        q_mask = pad_sequences([[1] * len(q) for q in queries], 0, "left")
        r_ids = pad_sequences(responses, self.pad_id, "right")
        r_mask = pad_sequences([[1] * len(r) for r in responses], 0, "right")
        ids, mask = torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1)
        return ids.to(self.device), mask.to(self.device), r_mask.to(self.device).float()

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # -- rollouts -----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, queries: list[list[int]]) -> list[list[int]]:
        """Sample one answer per prompt, cut after its first stop token."""
        ids, mask, _ = self.pack(queries, [[] for _ in queries])
        with self.autocast():
            out = self.model.pretrained_model.generate(input_ids=ids, attention_mask=mask, **self.generate_kwargs)
        answers = []
        for row in out[:, ids.shape[1]:]:
            stops = torch.isin(row, self.stop_ids).nonzero()
            end = int(stops[0]) + 1 if len(stops) else len(row)
            answers.append(row[:end].tolist())
        return answers

    def forward(self, queries, responses, reference: bool = False):
        """(log-probabilities of the answer tokens, values before each of them, answer mask), each [b, L]."""
        ids, mask, r_mask = self.pack(queries, responses)
        length = r_mask.shape[1]
        adapter_off = self.model.pretrained_model.disable_adapter() if reference else nullcontext()
        with self.autocast(), adapter_off:
            logits, values = self.model(ids, mask, logits_to_keep=length + 1)
        logps = torch.log_softmax(logits[:, :-1].float(), -1)
        logps = logps.gather(2, ids[:, -length:].unsqueeze(2)).squeeze(2)
        values = values[:, -length - 1:-1].float()
        return logps * r_mask, values * r_mask, r_mask

    @torch.no_grad()
    def rollout(self, prompts: list[list[int]]) -> dict:
        """Answers, scores, and the per-token quantities PPO optimises against, for one step's prompts."""
        self.model.eval()
        queries, responses = [], []
        for i in range(0, len(prompts), self.mini_batch):
            chunk = prompts[i:i + self.mini_batch]
            queries += chunk
            responses += self.generate(chunk)
        length = max(len(r) for r in responses)
        pad = lambda x: torch.nn.functional.pad(x, (0, length - x.shape[1]))  # noqa: E731
        logps, ref_logps, values, masks, scores = [], [], [], [], []
        for i in range(0, len(queries), self.mini_batch):
            q, r = queries[i:i + self.mini_batch], responses[i:i + self.mini_batch]
            lp, v, m = self.forward(q, r)
            logps.append(pad(lp))
            values.append(pad(v))
            masks.append(pad(m))
            ref_logps.append(pad(self.forward(q, r, reference=True)[0]))
            ids, mask, _ = self.pack(q, r)
            scores.append(self.reward(ids, mask).to(self.device))
        batch = {"queries": queries, "responses": responses, "logps": torch.cat(logps), "values": torch.cat(values),
                 "ref_logps": torch.cat(ref_logps), "mask": torch.cat(masks), "scores": torch.cat(scores)}
        self.state.num_input_tokens_seen += sum(len(q) + len(r) for q, r in zip(queries, responses))
        return batch

    def advantages(self, batch: dict) -> dict:
        """Per-token rewards (KL penalty + score on the last token), then GAE; adds them to `batch`."""
        scores, mask = batch["scores"], batch["mask"]
        if self.ft.ppo_score_norm:
            self.moments.update(scores)
            scores = (scores - self.moments.mean) / (self.moments.std + 1e-8)
        kl = (batch["logps"] - batch["ref_logps"]) * mask
        rewards = -self.kl_ctl.value * kl
        last = mask.sum(1).long() - 1
        rewards[torch.arange(len(last), device=last.device), last] += scores
        if self.ft.ppo_whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, batch["values"], mask)
        batch.update(advantages=masked_whiten(advantages, mask) * mask, returns=returns,
                     kl=kl.sum(1).mean().item())
        return batch

    # -- updates ------------------------------------------------------------------------------------
    def loss(self, batch: dict, rows: list[int]) -> tuple[torch.Tensor, dict]:
        """The clipped PPO loss of the mini-batch `rows` (and its statistics)."""
        logps, values, mask = self.forward([batch["queries"][i] for i in rows], [batch["responses"][i] for i in rows])
        length = mask.shape[1]
        pick = lambda key: batch[key][rows, :length]  # noqa: E731
        old_logps, old_values, advantages, returns = pick("logps"), pick("values"), pick("advantages"), pick("returns")
        ratio = torch.exp(logps - old_logps)
        policy_loss = masked_mean(torch.max(-advantages * ratio,
                                            -advantages * ratio.clamp(1 - CLIP_RANGE, 1 + CLIP_RANGE)), mask)
        clipped = old_values + (values - old_values).clamp(-CLIP_RANGE_VALUE, CLIP_RANGE_VALUE)
        value_loss = 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
        clip_fraction = masked_mean((torch.abs(ratio - 1) > CLIP_RANGE).float(), mask)
        return policy_loss + VF_COEF * value_loss, {"ppo/policy_loss": policy_loss.item(),
                                                    "ppo/value_loss": value_loss.item(),
                                                    "ppo/clip_fraction": clip_fraction.item()}

    def optimize(self, batch: dict) -> dict:
        """`ppo_epochs` shuffled passes over the rollouts; an optimizer step per backward batch."""
        self.model.train()
        accumulation = self.args.gradient_accumulation_steps
        stats: dict[str, list[float]] = {}
        size = len(batch["queries"])
        for _ in range(self.ft.ppo_epochs):
            order = torch.randperm(size).tolist()
            for start in range(0, size, self.mini_batch * accumulation):
                group = order[start:start + self.mini_batch * accumulation]
                minis = [group[i:i + self.mini_batch] for i in range(0, len(group), self.mini_batch)]
                for rows in minis:
                    loss, details = self.loss(batch, rows)
                    (loss / len(minis)).backward()
                    for key, value in {"loss": loss.item(), **details}.items():
                        stats.setdefault(key, []).append(value)
                if self.args.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.params, self.args.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        return {key: sum(values) / len(values) for key, values in stats.items()}

    # -- the loop -----------------------------------------------------------------------------------
    def train(self) -> dict:
        args, state = self.args, self.state
        if self.resume_from:
            self.load_checkpoint(Path(self.resume_from))
        self.callbacks.on_train_begin(args, state, self.control)
        start, pending = time.time(), {}
        while state.global_step < state.max_steps and not self.control.should_training_stop:
            self.callbacks.on_step_begin(args, state, self.control)
            batch = self.advantages(self.rollout(self.batch(state.global_step)))
            learning_rate = self.scheduler.get_last_lr()[0]
            step_stats = self.optimize(batch)
            self.scheduler.step()
            self.kl_ctl.update(batch["kl"], len(batch["queries"]))
            step_stats.update(reward=batch["scores"].mean().item(), kl=batch["kl"], **{
                "ppo/kl_coef": self.kl_ctl.value,
                "ppo/response_length": batch["mask"].sum(1).mean().item()})
            for key, value in step_stats.items():
                pending.setdefault(key, []).append(value)
            state.global_step += 1
            state.epoch = state.global_step * self.batch_size / len(self.prompts)
            if self.every("logging") or state.global_step == state.max_steps:
                logs = {key: round(sum(v) / len(v), 6) for key, v in pending.items()}
                self.log({**logs, "learning_rate": learning_rate, "epoch": round(state.epoch, 4)})
                pending = {}
            self.callbacks.on_step_end(args, state, self.control)
            if (self.every("save") or self.stop.received) and state.global_step < state.max_steps:
                self.save_checkpoint()
        self.callbacks.on_train_end(args, state, self.control)
        self.stop.check(args.output_dir, state.global_step, state.max_steps)
        runtime = time.time() - start
        losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
        return {"train_runtime": round(runtime, 4), "train_loss": sum(losses) / max(len(losses), 1),
                "train_samples_per_second": round(state.global_step * self.batch_size / max(runtime, 1e-9), 3),
                "epoch": state.epoch, "total_flos": 0}

    def every(self, kind: str) -> bool:
        """Whether this step logs (`kind` logging) or saves a checkpoint (save), as the Trainer decides it:
        `<kind>_strategy: steps` every `<kind>_steps` steps (a fraction below 1: of the total steps)."""
        strategy, steps = getattr(self.args, f"{kind}_strategy"), getattr(self.args, f"{kind}_steps")
        if getattr(strategy, "value", strategy) != "steps" or not steps:
            return False
        every = math.ceil(self.state.max_steps * steps) if steps < 1 else int(steps)
        return self.state.global_step % max(every, 1) == 0

    def log(self, logs: dict) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callbacks.on_log(self.args, self.state, self.control, logs=logs)

    # -- saving -------------------------------------------------------------------------------------
    def save_model(self, folder: Path) -> None:
        """The policy's adapter (not the reward adapter), the critic's value head and the tokenizer."""
        self.model.pretrained_model.save_pretrained(str(folder), selected_adapters=["default"])
        save_value_head(self.model.v_head, folder)
        self.tokenizer.save_pretrained(str(folder))
        torch.save(self.args, folder / "training_args.bin")

    def save_checkpoint(self) -> None:
        """checkpoint-N: weights, optimizer, scheduler, RNG and PPO state, renamed into place when complete."""
        import numpy as np
        from transformers.trainer_utils import rotate_checkpoints

        from lmforge.utils.atomic import fsync_tree, staging_dir

        out = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging = staging_dir(out, name)
        self.save_model(staging)
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
        torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   staging / "rng_state.pth")
        (staging / PPO_STATE_FILE).write_text(json.dumps({
            "kl_coef": self.kl_ctl.value, "score_moments": [self.moments.mean, self.moments.var, self.moments.count],
        }))
        self.state.save_to_json(str(staging / "trainer_state.json"))
        fsync_tree(staging)
        target = out / name
        if target.exists():  # a checkpoint of the same step from an earlier attempt
            import shutil

            shutil.rmtree(target)
        os.replace(staging, target)
        rotate_checkpoints(str(out), save_total_limit=self.args.save_total_limit)
        self.control = self.callbacks.on_save(self.args, self.state, self.control)

    def load_checkpoint(self, folder: Path) -> None:
        import numpy as np
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers import TrainerState

        logger.info(f"Resuming PPO from {folder}")
        weights = load_file(str(folder / "adapter_model.safetensors"), device=str(self.device))
        set_peft_model_state_dict(self.model.pretrained_model, weights, adapter_name="default")
        self.model.v_head.load_state_dict(load_value_head(folder).state_dict())
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=self.device))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
        rng = torch.load(folder / "rng_state.pth", weights_only=False)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        ppo_state = json.loads((folder / PPO_STATE_FILE).read_text())
        self.kl_ctl.value = ppo_state["kl_coef"]
        self.moments = RunningMoments(*ppo_state["score_moments"])
        saved = TrainerState.load_from_json(str(folder / "trainer_state.json"))
        self.state.global_step, self.state.epoch = saved.global_step, saved.epoch
        self.state.log_history = saved.log_history
        self.state.num_input_tokens_seen = saved.num_input_tokens_seen


def run_ppo(cfg: RunConfig, resume_from: str | None, callbacks=()) -> dict:
    """Train a LoRA policy with PPO against `reward_model`; write the run folder; return the metrics."""
    from lmforge.data.pipeline import get_dataset
    from lmforge.model.tokenizer import load_tokenizer_and_template
    from lmforge.train.args import build_training_args
    from lmforge.train.common import compute_dtype, load_trainable_model
    from lmforge.train.outputs import write_run_file
    from lmforge.train.reward_model import check_reward_model, load_reward
    from lmforge.utils.atomic import publish_files, staging_dir, write_json_atomic

    check_reward_model(cfg, _policy_config(cfg))  # a reward model that cannot work is refused before any loading
    tokenizer, template = load_tokenizer_and_template(cfg.model, cfg.data)
    tokenizer.chat_template = template.to_jinja(tokenizer)  # saved with the result, as sft does
    dataset = get_dataset(cfg, tokenizer, template, stage="ppo")
    args = build_training_args(cfg, resume_from)
    policy = load_trainable_model(cfg, tokenizer, template)
    model = ValueHeadModel(policy).to(args.device)
    reward = load_reward(cfg, policy, tokenizer, args.device, compute_dtype(cfg), template.recorded_name)
    trainer = PPOTrainer(cfg, args, model, reward, tokenizer, template, dataset.train_dataset, resume_from, callbacks)
    metrics = trainer.train()

    out = Path(cfg.train.output_dir)
    staging = staging_dir(out, "final")
    trainer.save_model(staging)
    publish_files(staging, out)
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    write_json_atomic(out / "train_results.json", metrics)
    write_json_atomic(out / "all_results.json", metrics)
    if cfg.finetune.plot_loss:
        from lmforge.train.plotting import plot_keys, plot_losses

        for path in plot_losses(trainer.state.log_history, out, plot_keys("ppo")):
            logger.info(f"Curve written to {path}")
    write_run_file(cfg, out, template.recorded_name)
    return metrics


def _policy_config(cfg: RunConfig):
    from transformers import AutoConfig

    from lmforge.errors import UserError
    from lmforge.model.loader import check_model_path, hub_kwargs

    check_model_path(cfg.model.model_name_or_path)
    try:
        return AutoConfig.from_pretrained(cfg.model.model_name_or_path, **hub_kwargs(cfg.model))
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the model config of '{cfg.model.model_name_or_path}': "
                        f"{str(err).splitlines()[0]}") from None
