"""One logger setup for the package: short lines on stderr, level from LMFORGE_VERBOSITY."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(levelname)s|%(asctime)s] %(name)s: %(message)s"
_configured = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the `lmforge` root, configured once."""
    global _configured
    if not _configured:
        root = logging.getLogger("lmforge")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("LMFORGE_VERBOSITY", "INFO").upper())
        root.propagate = False
        _configured = True
    return logging.getLogger(name)
