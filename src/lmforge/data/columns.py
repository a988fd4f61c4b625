"""Column and split names shared by the stages of the data pipeline, defined once.

Converted rows carry the meta columns (where a row came from, why it was dropped) through
tokenization so that every drop can be reported by dataset and row; they are removed before the
rows reach a model, which sees only model columns.
"""

META_COLUMNS = ("_dataset", "_row", "_drop")  # source dataset, row number in it, drop reason ("" = kept)
# Processors' flags on rows they keep: a list of {dataset, row, reason} (a packed block holds several rows).
WARN_COLUMN = "_warn"
DROPPED_TOKENS = "_dropped_tokens"  # pt packing: tokens after the last full block of a batch
MODEL_COLUMNS = ("input_ids", "attention_mask", "labels", "position_ids")
TRAIN_SPLIT = "train"
EVAL_SPLIT = "validation"  # several eval datasets with eval_on_each_dataset: validation_<name>
