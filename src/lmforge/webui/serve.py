"""Serve LLaMA Board until interrupted; its jobs keep running when it stops."""

from __future__ import annotations

from pathlib import Path

from lmforge.webui.board import Board
from lmforge.webui.webchat import announce, launch


def serve_board(server_name: str, server_port: int, share: bool, auth, lang: str = "en") -> None:
    board = Board(Path.cwd(), lang)
    page = board.build()
    board.jobs.start_scheduler()
    launch(page, server_name, server_port, share, auth, auth_message="Log in to LLaMA Board.")
    announce("webui", page, server_name, auth)
    print(f"lmforge webui: jobs and settings in {board.cache}; runs in {board.saves}", flush=True)
    print("lmforge webui: press Ctrl+C to stop (running jobs go on).", flush=True)
    try:
        page.block_thread()
    finally:
        board.jobs.stop_scheduler()
