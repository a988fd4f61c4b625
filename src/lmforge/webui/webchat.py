"""`lmforge webchat CONFIG`: chat with a model in the browser.

The page (see `chat_page`) streams each answer into the chat as it is generated and keeps the history.
Where it listens comes from Gradio's usual environment variables, with safe defaults:
GRADIO_SERVER_NAME (127.0.0.1: this machine only; set 0.0.0.0 to open it to the network),
GRADIO_SERVER_PORT (7860) and GRADIO_SHARE (false; true asks Gradio for a public share link).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.config import RunConfig

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
    share_text = environ.get("GRADIO_SHARE", "").strip().lower()
    if share_text not in _TRUE + _FALSE:
        raise UserError(f"GRADIO_SHARE='{environ['GRADIO_SHARE']}' is not a yes/no value; "
                        f"use one of: {', '.join(_TRUE + _FALSE[1:])}.")
    return name, port, share_text in _TRUE


def serve(cfg: RunConfig) -> None:
    """Load the model of `cfg` and serve the chat page until interrupted."""
    # Checked before the model loads, so that a typo costs no waiting.
    server_name, server_port, share = server_settings()
    from lmforge.chat.factory import create_engine
    from lmforge.webui.chat_page import build_chat_page

    engine = create_engine(cfg)
    heading = f"## lmforge webchat\nModel `{cfg.model.model_name_or_path}`, template `{engine.template.name}`"
    page = build_chat_page(engine, heading=heading)
    page.queue(default_concurrency_limit=1)
    try:
        # run_history=False: conversations are never recorded (Gradio can upload runs to a Hub bucket).
        page.launch(server_name=server_name, server_port=server_port, share=share, prevent_thread_lock=True,
                    quiet=True, show_error=True, run_history=False)
    except OSError:
        raise UserError(f"Cannot listen on {server_name}:{server_port}: the port is in use, or the address is not "
                        "one of this machine's. Set GRADIO_SERVER_PORT to a free port (and GRADIO_SERVER_NAME to an "
                        "address of this machine).") from None
    print(f"lmforge webchat: running on {page.local_url}", flush=True)
    if server_name not in ("127.0.0.1", "localhost", "::1"):
        print(f"lmforge webchat: listening on {server_name}: other machines can reach this page.", flush=True)
    if page.share_url:
        print(f"lmforge webchat: public share link {page.share_url}", flush=True)
    print("lmforge webchat: press Ctrl+C to stop.", flush=True)
    page.block_thread()
