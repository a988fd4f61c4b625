#!/usr/bin/env bash
# The README quick start: build the tiny model, look at the identity data through its template.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LMFORGE=.venv/bin/lmforge

[ -f models/tiny-llama/config.json ] || $LMFORGE tiny-model models/tiny-llama --arch llama
$LMFORGE data check examples/train_lora/tiny_llama_lora_sft.yaml
$LMFORGE data preview examples/train_lora/tiny_llama_lora_sft.yaml --num 2
