"""PiSSA's adapters on disk: the initial adapter kept for conversion, and the final one converted to a plain LoRA.

A PiSSA adapter trains on top of the residual of the base weights (the base minus its principal
components), so on its own it does not apply to the original base model. With `pissa_convert`, the
initial adapter is saved to `pissa_init/` before the first step, and the final adapter is written
twice: as trained to `pissa_backup/`, and converted (peft's conversion: rank 2r, the difference
to the initial adapter) to the run folder, where it applies to the original base like any LoRA.
"""

from __future__ import annotations

from pathlib import Path

from transformers import TrainerCallback

INIT_DIR = "pissa_init"
BACKUP_DIR = "pissa_backup"


class SavePissaInit(TrainerCallback):
    """Save the adapter as initialised, once, before training starts (a resumed run already has it)."""

    def __init__(self, output_dir: str) -> None:
        self.folder = Path(output_dir) / INIT_DIR

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or (self.folder / "adapter_config.json").is_file() or model is None:
            return
        from lmforge.utils.atomic import staging_dir

        config = model.peft_config["default"]
        init = config.init_lora_weights
        # Saved as a plain initialisation, so that loading it for the conversion does not decompose again.
        config.init_lora_weights = True
        staging = staging_dir(self.folder.parent, INIT_DIR)
        try:
            model.save_pretrained(str(staging))
        finally:
            config.init_lora_weights = init
        staging.rename(self.folder)


def save_converted(model, staging: Path, output_dir: Path) -> None:
    """Write the trained PiSSA adapter to staging/pissa_backup and its plain-LoRA conversion to staging."""
    init = output_dir / INIT_DIR
    model.save_pretrained(str(staging / BACKUP_DIR))
    model.save_pretrained(str(staging), path_initial_model_for_weight_conversion=str(init))

