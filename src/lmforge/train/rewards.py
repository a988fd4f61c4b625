"""The rewards of stage grpo: built-in reward functions and functions loaded from Python files.

trl's GRPOTrainer calls every reward as `func(prompts=..., completions=..., completion_ids=..., **columns)`,
one call per batch of completions, and expects one float per completion (None: not scored). lmforge's
columns are `prompt_ids` (the prompt's token ids), `answer` (the dataset's reference answer, None when
the row has none) and `source` (which dataset row the prompt came from); trl adds `trainer_state`,
`log_extra` and `log_metric`. A user function is loaded from its file by path (importlib, the file
runs as a module), its signature is checked before the model loads, and when it raises or returns
something else than one number per completion the run stops with one line naming the function and
the sample. The reward model lives in `grpo_reward_model.py`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lmforge.config.rewards import RewardSpec, parse_reward_spec
from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

# Every keyword argument a reward function is called with (trl's and lmforge's dataset columns).
CALL_KWARGS = ("prompts", "completions", "completion_ids", "prompt_ids", "answer", "source", "trainer_state",
               "log_extra", "log_metric")
_SHOWN_CHARS = 40  # of a completion quoted in an error


def exact_match(completions: list[str], answer: list[str | None], **kwargs) -> list[float | None]:
    """1.0 when the completion equals the reference answer (surrounding whitespace aside), else 0.0; rows
    without a reference answer are not scored (None)."""
    return [None if ref is None else float(text.strip() == ref.strip()) for text, ref in zip(completions, answer)]


def format_reward(regex: str) -> Callable[..., list[float]]:
    """1.0 when the whole completion (surrounding whitespace aside) matches `regex`, else 0.0; `.` matches newlines."""
    pattern = re.compile(regex, re.DOTALL)

    def format(completions: list[str], **kwargs) -> list[float]:  # the metrics are named after it
        return [float(pattern.fullmatch(text.strip()) is not None) for text in completions]

    return format


def length_penalty_reward(max_completion_length: int) -> Callable[..., list[float]]:
    """-(completion tokens / max_completion_length): 0 for an empty completion, -1 for one cut at the limit."""

    def length_penalty(completion_ids: list[list[int]], **kwargs) -> list[float]:
        return [-len(ids) / max_completion_length for ids in completion_ids]

    return length_penalty


class RewardFunction:
    """A reward as trl calls it, with lmforge's checks: one number (or None) per completion, one-line errors."""

    def __init__(self, func: Callable, name: str, where: str):
        self.func, self.where = func, where
        self.__name__ = name  # trl names the metrics rewards/<name>/mean and /std after it

    def _call(self, kwargs: dict[str, Any]):
        out = self.func(**kwargs)
        # An async reward function is awaited here: training calls the rewards one after the other.
        return asyncio.run(out) if inspect.isawaitable(out) else out

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float | None]:
        kwargs = {"prompts": prompts, "completions": completions, **kwargs}
        try:
            out = self._call(kwargs)
        except UserError:
            raise  # already one line (a reward model's API that cannot be reached, ...)
        except Exception as err:  # any error of user code ends the run with one line
            raise UserError(self._failure(err, kwargs)) from None
        return self._checked(out, len(completions))

    def _failure(self, err: Exception, kwargs: dict[str, Any]) -> str:
        """One line: the function, the first sample that fails on its own, the error."""
        count = len(kwargs["completions"])
        sample, failing = None, err
        for index in range(count):
            single = {k: v[index:index + 1] if isinstance(v, list) and len(v) == count else v
                      for k, v in kwargs.items()}
            try:
                self._call(single)
            except Exception as single_err:
                sample, failing = index, single_err
                break
        message = str(failing).strip().splitlines()[0] if str(failing).strip() else ""
        error = f"{type(failing).__name__}: {message}" if message else type(failing).__name__
        if sample is None:
            return f"reward function '{self.__name__}' ({self.where}) failed on a batch of {count} completions: {error}"
        return (f"reward function '{self.__name__}' ({self.where}) failed on {_source(kwargs, sample)}, completion "
                f"{_shown(kwargs['completions'][sample])}: {error}")

    def _checked(self, out, count: int) -> list[float | None]:
        try:
            values = list(out)
        except TypeError:
            values = None
        rewards: list[float | None] = []
        for value in values or []:
            if value is None:
                rewards.append(None)
                continue
            try:
                rewards.append(float(value))
            except (TypeError, ValueError):
                break
        if values is None or len(values) != count or len(rewards) != count:
            got = f"a {type(out).__name__}" if values is None else f"{len(values)} values ({_shown(values)})"
            raise UserError(f"reward function '{self.__name__}' ({self.where}) returned {got}; it must return a list of "
                            f"{count} floats, one per completion (None for a completion it does not score).")
        return rewards


def _source(kwargs: dict[str, Any], index: int) -> str:
    sources = kwargs.get("source")
    return sources[index] if isinstance(sources, list) and index < len(sources) else f"sample {index}"


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS - 1] + "…"


def load_function(spec: RewardSpec) -> Callable:
    """The function `spec.function` of the Python file `spec.file`, with a signature trl can call."""
    where = f"{spec.file}:{spec.function}"
    path = spec.file.resolve()
    if not path.is_file():
        raise UserError(f"reward function file '{spec.file}' does not exist (reward_funcs entry '{spec.entry}').")
    module_name = f"lmforge_rewards_{abs(hash(str(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"reward function file '{spec.file}' cannot be loaded as Python code.")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling in the file look their module up there
    try:
        module_spec.loader.exec_module(module)
    except Exception as err:  # whatever the file raises: one line
        sys.modules.pop(module_name, None)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"reward function file '{spec.file}' failed to load: {type(err).__name__}"
                        f"{': ' + first if first else ''}") from None
    func = getattr(module, spec.function, None)
    if func is None:
        defined = sorted(name for name, value in vars(module).items()
                         if inspect.isfunction(value) and value.__module__ == module_name and not name.startswith("_"))
        raise UserError(f"reward function file '{spec.file}' has no function '{spec.function}' (it defines: "
                        f"{', '.join(defined) or 'no function'}).")
    check_signature(func, where)
    return func


def check_signature(func, where: str) -> None:
    """Refuse a reward function that trl's call `func(prompts=..., completions=..., **more)` cannot reach."""
    name = getattr(func, "__name__", where.rpartition(":")[2])
    expected = f"def {name}(completions, **kwargs) -> list[float]"
    if inspect.isclass(func) or not callable(func):
        kind = "class" if inspect.isclass(func) else type(func).__name__
        raise UserError(f"reward function '{where}' is not a function (it is a {kind}); write it as `{expected}`.")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # a callable without a readable signature: the first call tells
    params = list(signature.parameters.values())
    required = [p for p in params if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params) or any(
            p.kind is inspect.Parameter.POSITIONAL_ONLY or p.name not in CALL_KWARGS for p in required):
        raise UserError(f"reward function '{where}' has the signature {name}{signature}; it must take the "
                        f"completions and keyword arguments (prompts, answer, ...): `{expected}`.")


def build_reward_functions(cfg: RunConfig) -> list[RewardFunction]:
    """The `reward_funcs` of the run, in order, each with a unique name."""
    ft = cfg.finetune
    rewards: list[RewardFunction] = []
    for entry in ft.reward_funcs or []:
        spec = parse_reward_spec(entry)
        if spec is None:  # validation refuses these first; this guards direct callers
            raise UserError(f"reward_funcs entry '{entry}' is neither a built-in reward nor path/to/file.py:function.")
        if spec.builtin == "exact_match":
            func, where = exact_match, "built-in"
        elif spec.builtin == "format":
            func, where = format_reward(spec.regex if spec.regex is not None else ft.reward_format_regex), "built-in"
        elif spec.builtin == "length_penalty":
            func, where = length_penalty_reward(ft.max_completion_length), "built-in"
        else:
            func, where = load_function(spec), str(spec.file)
        name = spec.function or func.__name__
        rewards.append(RewardFunction(func, _unique(name, [r.__name__ for r in rewards]), where))
    return rewards


def _unique(name: str, taken: Sequence[str]) -> str:
    """`name`, or `name_2`, `name_3`, ... when an earlier reward has it (each reward logs its own metrics)."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}_{number}"
    return candidate
