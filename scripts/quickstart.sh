#!/usr/bin/env bash
# The README quick start: build the tiny model, check the identity data, teach the model its
# name with LoRA, then ask it who it is.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The venv of scripts/setup.sh, else the lmforge on PATH (as in the Docker images).
if [ -x .venv/bin/lmforge ]; then LMFORGE=.venv/bin/lmforge; else LMFORGE=lmforge; fi
CONFIG=examples/train_lora/tiny_llama_lora_sft.yaml

[ -f models/tiny-llama/config.json ] || $LMFORGE tiny-model models/tiny-llama --arch llama
$LMFORGE data check $CONFIG
$LMFORGE data preview $CONFIG --num 1
$LMFORGE train $CONFIG
# Asked in its own step so that a failing chat fails the quick start (inside `echo` it would not).
answer=$(echo 'Who are you?' | $LMFORGE chat model_name_or_path=saves/tiny-llama/lora/sft do_sample=false)
echo
echo "Who are you?  ->  $answer"
