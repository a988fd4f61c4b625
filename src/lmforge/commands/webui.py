"""`lmforge webui`: LLaMA Board, one page to train, evaluate and predict, chat and export (see `lmforge.webui.board`).

It works in the current folder, as LLaMA-Factory's board does: models under `models/` or the hub,
data in `data/`, runs in `saves/`, and its own files (jobs, settings) in `llamaboard_cache/`.
Where it listens and who may log in: GRADIO_SERVER_NAME (127.0.0.1), GRADIO_SERVER_PORT (7860),
GRADIO_SHARE, GRADIO_AUTH / GRADIO_AUTH_FILE, as for `lmforge webchat`.
"""

from __future__ import annotations

from lmforge.commands.common import ArgumentParser


def main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="lmforge webui", description="LLaMA Board: train, evaluate, chat and export.")
    parser.add_argument("--lang", default="en", choices=["en", "zh"], help="The page's first language.")
    args = parser.parse_args(argv)
    from lmforge.webui.webchat import login_settings, server_settings

    # Checked before anything loads, so that a typo costs no waiting.
    server_name, server_port, share = server_settings()
    auth = login_settings(server_name, share, command="webui")
    from lmforge.webui.serve import serve_board

    serve_board(server_name, server_port, share, auth, args.lang)
    return 0
