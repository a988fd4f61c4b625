"""One logger setup for the package: short lines on stderr, level from LMFORGE_VERBOSITY."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "[%(levelname)s|%(asctime)s] %(name)s: %(message)s"
_configured = False


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (it may be replaced after set-up, e.g. by tests)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the current sys.stderr always wins
        pass


def get_logger(name: str) -> logging.Logger:
    """A logger under the `lmforge` root, configured once."""
    global _configured
    if not _configured:
        root = logging.getLogger("lmforge")
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("LMFORGE_VERBOSITY", "INFO").upper())
        root.propagate = False
        # torchao (installed with the gptq extra) logs that its CUDA libraries do not load on a CPU-only torch,
        # and torch warns about the types it registers: at every start, about nothing the user can change.
        logging.getLogger("torchao").setLevel(logging.ERROR)
        logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
        _configured = True
    return logging.getLogger(name)


def quiet_known_warnings() -> None:
    """Silence deprecation notices that libraries raise about their own internal calls, not about the user's config."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*is deprecated", category=FutureWarning)
    # trl's GRPOTrainer switches checkpointing off to generate and on again by the names transformers 5 deprecates.
    warnings.filterwarnings("ignore", message=r"`gradient_checkpointing_(enable|disable)` is deprecated",
                            category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*'pin_memory' argument is set as true", category=UserWarning)
