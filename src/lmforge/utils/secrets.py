"""Keep access tokens out of every file lmforge writes.

A token is a setting whose name ends with `_token` (`hf_hub_token`, `ms_hub_token`, `om_hub_token`,
transformers' `hub_token`): the rule transformers itself uses to mask its TrainingArguments in logs.
Files that record a run's settings (`lmforge_run.json`, `lmforge_export.json`) are shared and
uploaded with the model, so the tokens are left out of them entirely; the live run still uses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

SECRET_SUFFIX = "_token"


def is_secret(name: str) -> bool:
    """Whether a setting named `name` holds a credential."""
    return name.endswith(SECRET_SUFFIX)


def without_secrets(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` without its credentials, also inside nested mappings (e.g. `vllm_config`)."""
    return {key: without_secrets(value) if isinstance(value, Mapping) else value
            for key, value in settings.items() if not is_secret(str(key))}
