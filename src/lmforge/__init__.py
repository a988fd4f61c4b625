"""lmforge: fine-tune, serve, export and evaluate large language models from one CLI."""

__version__ = "0.1.0"
