"""Settings read from environment variables, shared by the commands that read them (api, webui, train's launcher)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from lmforge.errors import UserError


def env_int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The whole number in `env[name]` (`default` when unset or empty); UserError naming the variable and the range."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"{name}={raw!r} is not an integer; expected a number from {low} to {high}.") from None
    if not low <= value <= high:
        raise UserError(f"{name}={value} is out of range; expected a number from {low} to {high}.")
    return value


def env_choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """`env[name]`, lower-cased, one of `choices` (the first when unset or empty); UserError naming the choices."""
    raw = env.get(name, "").strip()
    if not raw:
        return choices[0]
    if raw.lower() not in choices:
        raise UserError(f"{name}={raw!r} is not one of {', '.join(choices)}; unset it for {choices[0]}.")
    return raw.lower()


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (localhost, *.localhost, 127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface
