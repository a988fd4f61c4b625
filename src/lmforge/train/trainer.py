"""The Trainer used by every supervised stage: transformers' Seq2SeqTrainer with atomic checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import Seq2SeqTrainer
from transformers.trainer_utils import rotate_checkpoints

from lmforge.train.outputs import staging_dir


class ForgeTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose checkpoints appear all at once.

    Each checkpoint is written into a hidden staging folder and renamed to `checkpoint-N` when
    complete, so a run killed while saving leaves the previous checkpoints and no partial one.
    """

    def _save_checkpoint(self, model, trial):
        final_dir = Path(self.args.output_dir)
        name = f"checkpoint-{self.state.global_step}"
        staging = staging_dir(final_dir, name)
        real_output_dir = self.args.output_dir
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = real_output_dir
        written = staging / name
        best = self.state.best_model_checkpoint
        if best and Path(best).parent == staging:
            # The Trainer recorded the staging path as the best checkpoint; point it at the final place.
            self.state.best_model_checkpoint = str(final_dir / Path(best).name)
            if self.args.should_save:
                self.state.save_to_json(str(written / "trainer_state.json"))
        if self.args.should_save:
            _fsync_tree(written)
            target = final_dir / name
            if target.exists():  # a checkpoint of the same step from an earlier attempt
                import shutil

                shutil.rmtree(target)
            os.replace(written, target)
            staging.rmdir()
            rotate_checkpoints(
                real_output_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
            )


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files to disk before it is renamed into view."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
