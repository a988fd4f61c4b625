"""`lmforge webchat CONFIG`: chat with a model in the browser.

The page (see `chat_page`) streams each answer into the chat as it is generated and keeps the history.
Where it listens comes from Gradio's usual environment variables, with safe defaults:
GRADIO_SERVER_NAME (127.0.0.1: this machine only; set 0.0.0.0 to open it to the network),
GRADIO_SERVER_PORT (7860) and GRADIO_SHARE (false; true asks Gradio for a public share link).

The login is lmforge's (Gradio itself reads no such variable): GRADIO_AUTH=user:password, or
GRADIO_AUTH_FILE naming a file of `user:password` lines. A page reachable from other machines
(a non-loopback GRADIO_SERVER_NAME, or a share link) needs one: without it the command refuses to
start, unless GRADIO_ALLOW_UNAUTHENTICATED=true says an open page is intended.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.config.environment import is_loopback
from lmforge.errors import UserError
from lmforge.utils.logging import get_logger

if TYPE_CHECKING:
    from lmforge.config import RunConfig

logger = get_logger(__name__)

DEFAULT_SERVER_NAME = "127.0.0.1"
DEFAULT_SERVER_PORT = 7860
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def server_settings(environ=None) -> tuple[str, int, bool]:
    """(server_name, server_port, share) from GRADIO_SERVER_NAME, GRADIO_SERVER_PORT and GRADIO_SHARE."""
    environ = os.environ if environ is None else environ
    name = environ.get("GRADIO_SERVER_NAME", "").strip() or DEFAULT_SERVER_NAME
    port_text = environ.get("GRADIO_SERVER_PORT", "").strip() or str(DEFAULT_SERVER_PORT)
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise UserError(f"GRADIO_SERVER_PORT='{port_text}' is not a port number; expected 1-65535 "
                        f"(default {DEFAULT_SERVER_PORT}).")
    return name, port, _flag(environ, "GRADIO_SHARE")


def _flag(environ, name: str) -> bool:
    text = environ.get(name, "").strip().lower()
    if text not in _TRUE + _FALSE:
        raise UserError(f"{name}='{environ[name]}' is not a yes/no value; use one of: {', '.join(_TRUE + _FALSE[1:])}.")
    return text in _TRUE


def login_settings(server_name: str, share: bool, environ=None, command: str = "webchat") -> list[tuple[str, str]] | None:
    """The (user, password) pairs of GRADIO_AUTH and GRADIO_AUTH_FILE; None for an open page.

    Refuses an open page that other machines can reach, unless GRADIO_ALLOW_UNAUTHENTICATED is true.
    Messages never quote a password.
    """
    environ = os.environ if environ is None else environ
    logins = []
    pair = environ.get("GRADIO_AUTH", "")
    if pair.strip():
        logins.append(_login(pair, "GRADIO_AUTH"))
    file_name = environ.get("GRADIO_AUTH_FILE", "").strip()
    if file_name:
        logins.extend(_read_logins(Path(file_name).expanduser()))
    allowed = _flag(environ, "GRADIO_ALLOW_UNAUTHENTICATED")
    if not logins and (share or not is_loopback(server_name)) and not allowed:
        where = "a public share link (GRADIO_SHARE)" if share else f"{server_name} (reachable from other machines)"
        raise UserError(f"lmforge {command} would serve {where} without a login. Set GRADIO_AUTH=user:password (or "
                        "GRADIO_AUTH_FILE to a file of user:password lines), or GRADIO_ALLOW_UNAUTHENTICATED=true "
                        "to serve it open anyway.")
    return logins or None


def _login(text: str, source: str) -> tuple[str, str]:
    user, colon, password = text.strip().partition(":")
    if not colon or not user.strip() or not password:
        raise UserError(f"{source} is not user:password (a user name, a colon, then the password).")
    return user.strip(), password


def _read_logins(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"GRADIO_AUTH_FILE '{path}' cannot be read ({err.strerror}); give a file of user:password "
                        "lines.") from None
    logins = [_login(line, f"Line {number} of GRADIO_AUTH_FILE '{path}'")
              for number, line in enumerate(lines, 1) if line.strip() and not line.lstrip().startswith("#")]
    if not logins:
        raise UserError(f"GRADIO_AUTH_FILE '{path}' holds no user:password line.")
    if path.stat().st_mode & 0o077:
        logger.warning(f"GRADIO_AUTH_FILE '{path}' can be read by other users of this machine; chmod 600 it.")
    return logins


def launch(page, server_name: str, server_port: int, share: bool, auth: list[tuple[str, str]] | None,
           auth_message: str = "Log in to chat with the model.") -> None:
    """Start serving `page` in the background (as `lmforge webchat` does); UserError when it cannot listen."""
    page.queue(default_concurrency_limit=1)
    try:
        # run_history=False: conversations are never recorded (Gradio can upload runs to a Hub bucket).
        # show_error=False: an exception's own text never reaches the browser; the page shows
        # lmforge's messages (see chat_page.stream_answer) and the traceback goes to the server log.
        page.launch(server_name=server_name, server_port=server_port, share=share, prevent_thread_lock=True,
                    quiet=True, show_error=False, run_history=False, auth=auth,
                    auth_message=auth_message if auth else None)
    except OSError:
        raise UserError(f"Cannot listen on {server_name}:{server_port}: the port is in use, or the address is not "
                        "one of this machine's. Set GRADIO_SERVER_PORT to a free port (and GRADIO_SERVER_NAME to an "
                        "address of this machine).") from None


def serve(cfg: RunConfig) -> None:
    """Load the model of `cfg` and serve the chat page until interrupted."""
    # Checked before the model loads, so that a typo costs no waiting.
    server_name, server_port, share = server_settings()
    auth = login_settings(server_name, share)
    from lmforge.chat.factory import create_engine
    from lmforge.webui.chat_page import build_chat_page

    engine = create_engine(cfg)
    heading = f"## lmforge webchat\nModel `{cfg.model.model_name_or_path}`, template `{engine.template.name}`"
    page = build_chat_page(engine, heading=heading)
    launch(page, server_name, server_port, share, auth)
    announce("webchat", page, server_name, auth)
    print("lmforge webchat: press Ctrl+C to stop.", flush=True)
    page.block_thread()


def announce(command: str, page, server_name: str, auth) -> None:
    """Say where the page is, whether it needs a login, and whether other machines can reach it."""
    print(f"lmforge {command}: running on {page.local_url}", flush=True)
    if auth:
        print(f"lmforge {command}: login required ({len(auth)} user{'s' if len(auth) > 1 else ''}).", flush=True)
    if not is_loopback(server_name):
        print(f"lmforge {command}: listening on {server_name}: other machines can reach this page.", flush=True)
    if page.share_url:
        print(f"lmforge {command}: public share link {page.share_url}", flush=True)
