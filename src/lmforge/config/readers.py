"""Which code reads each setting ("readers"); `lmforge.config.run.COMMAND_READERS` says which commands run it.

Every config field names its readers in its metadata: `metadata={"help": ..., "read_by": (DATASET,)}`.
A command reads a key when it runs one of the key's readers. From that one record:

- `lmforge help CMD` lists exactly the keys CMD reads;
- a key of CMD's groups that CMD does not read is still accepted (LLaMA-Factory configs keep working),
  and gets a warning when it is set;
- validation checks a key only for the commands that read it (a key that validation reads to refuse
  a combination is read: tag it with the reader under which validation checks it).

When code starts or stops reading a field, change the field's `read_by` (tests check that every field
has one, and that validation reads no key the command does not read). `read_by=()` marks a
LLaMA-Factory key that lmforge accepts but does not implement.
"""

from __future__ import annotations

TOKENIZER = "tokenizer"
"""The tokenizer and hub access: model.tokenizer.load_tokenizer, model.loader.hub_kwargs (every command)."""

TEMPLATE = "template"
"""The chat template: data.templates.get_template, as model.tokenizer.load_tokenizer_and_template calls it."""

DATASET = "dataset"
"""Datasets to tokenized samples: data.pipeline, data.loader, data.processors (train, data)."""

MODEL = "model"
"""Model weights and adapters: model.loader.load_model, model.resolve, model.adapters (not data)."""

TRAINING = "training"
"""Training: train.*, the trainable model (model.adapters), the Trainer and its TrainingArguments."""

ENGINE = "engine"
"""The Hugging Face inference engine (chat.hf_engine.HFEngine): prediction in train, serving, eval."""

GENERATION = "generation"
"""Generation by the inference engines (generate() and the backends' sampling): prediction in train, serving."""

SERVING = "serving"
"""Serving a chat (chat, webchat, api): the default system prompt, the vllm and llama.cpp backends."""

EXPORT = "export"
"""`lmforge export`: export.*."""

EVAL = "eval"
"""`lmforge eval`: eval.run, eval.tasks."""

ALL_READERS = (TOKENIZER, TEMPLATE, DATASET, MODEL, TRAINING, ENGINE, GENERATION, SERVING, EXPORT, EVAL)
