"""Bad input of every kind: one line saying what is wrong, where, and the fix; a non-zero exit; no traceback;
nothing half-written. (API requests have their own matrix in tests/api.)"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lmforge.cli import main

MODEL = "MODEL"  # replaced by the tiny model's path
TRAIN = ["model_name_or_path=MODEL", "stage=sft", "do_train=true", "template=llama3", "output_dir=out", "dataset_dir=d"]
EXPORT = ["model_name_or_path=MODEL", "template=llama3", "export_dir=e"]

# (name, argv, exit code, the last line of stderr; {w} is the workspace, {m} the model folder)
CASES = [
    # config files
    ("yaml syntax", ["train", "bad.yaml"], 1, "lmforge train: error: bad.yaml:3:6: invalid YAML: mapping values are "
     "not allowed here."),
    ("yaml list", ["train", "list.yaml"], 1, "lmforge train: error: list.yaml: a config file must be a mapping of "
     "key: value, got a list."),
    ("json syntax", ["train", "bad.json"], 1, "lmforge train: error: bad.json:1:28: invalid JSON: Expecting property "
     "name enclosed in double quotes."),
    ("missing config", ["train", "nope.yaml"], 1, "lmforge train: error: Config file 'nope.yaml' not found. Check the "
     "path (it is relative to {w})."),
    ("config suffix", ["train", "cfg.txt"], 1, "lmforge train: error: Expected a config file ending in .yaml, .yml or "
     ".json, or key=value settings; got 'cfg.txt'."),
    ("bare word", ["train", "list.yaml", "oops"], 1, "lmforge train: error: Cannot read 'oops': write settings as "
     "key=value or --key value."),
    # overrides and values
    ("unknown key", ["train", *TRAIN, "dataset=good", "lerning_rate=1e-4"], 1, "lmforge train: error: Config error: "
     "unknown key 'lerning_rate'. Did you mean 'learning_rate'?"),
    ("not an integer", ["train", *TRAIN, "dataset=good", "cutoff_len=abc"], 1, "lmforge train: error: Config error: "
     "'cutoff_len': expected an integer, got 'abc'."),
    ("not a number", ["train", *TRAIN, "dataset=good", "learning_rate=fast"], 1, "lmforge train: error: Config error: "
     "'learning_rate': expected a number, got 'fast'."),
    ("negative learning rate", ["train", *TRAIN, "dataset=good", "learning_rate=-1"], 1, "lmforge train: error: "
     "Config error: 'learning_rate' must be positive, got -1.0."),
    ("misspelt stage", ["train", *TRAIN, "dataset=good", "stage=sftt"], 1, "lmforge train: error: Config error: "
     "'stage' is 'sftt', which is not one of: pt, sft, rm, ppo, dpo, kto, grpo. Did you mean 'sft'?"),
    ("ppo without reward model", ["train", *TRAIN, "dataset=good", "stage=ppo"], 1, "lmforge train: error: Config "
     "error: stage ppo needs 'reward_model': the output_dir of a LoRA reward model run (stage rm), a full reward model "
     "folder with reward_model_type: full, or a URL with reward_model_type: api."),
    ("sft data for dpo", ["train", *TRAIN, "dataset=good", "stage=dpo"], 1, "lmforge train: error: Stage 'dpo' needs "
     "preference data, but dataset 'good' has no `ranking: true` in {w}/d/dataset_info.json. Use a dataset with "
     "chosen/rejected answers and set \"ranking\": true (plus its chosen/rejected columns)."),
    ("kto without kto_tag", ["train", *TRAIN, "dataset=good", "stage=kto"], 1, "lmforge train: error: Stage 'kto' "
     "needs feedback data, but dataset 'good' maps no `kto_tag` column in {w}/d/dataset_info.json. Add \"kto_tag\": "
     "\"<column>\" to its `columns` (true when the answer is desirable, false when not)."),
    ("misspelt template", ["train", *TRAIN, "dataset=good", "template=lama3"], 1, "lmforge train: error: Config "
     "error: unknown template 'lama3'. Did you mean 'llama3'? Run `lmforge templates` to list them."),
    ("fine-tuning type", ["train", *TRAIN, "dataset=good", "finetuning_type=qlora"], 1, "lmforge train: error: Config "
     "error: 'finetuning_type' is 'qlora', which is not one of: lora, oft, freeze, full. Did you mean 'lora'?"),
    ("no dataset", ["train", *TRAIN], 1, "lmforge train: error: Config error: 'do_train' needs 'dataset': one or more "
     "names from dataset_info.json."),
    ("no output_dir", ["train", "model_name_or_path=MODEL", "dataset=good", "dataset_dir=d", "do_train=true"], 1,
     "lmforge train: error: Config error: 'output_dir' is required: the folder where the run writes its results."),
    ("bf16 and fp16", ["train", *TRAIN, "dataset=good", "bf16=true", "fp16=true"], 1, "lmforge train: error: Config "
     "error: 'bf16' and 'fp16' cannot both be true."),
    ("deepspeed config missing", ["train", *TRAIN, "dataset=good", "deepspeed=ds_missing.json"], 1,
     "lmforge train: error: deepspeed: 'ds_missing.json' is not a file; give a DeepSpeed JSON config, e.g. "
     "examples/deepspeed/ds_z2_config.json."),
    ("deepspeed not installed", ["train", *TRAIN, "dataset=good", "deepspeed=bad.json"], 1,
     "lmforge train: error: deepspeed is set, but the DeepSpeed package is not installed. Install it (DS_BUILD_OPS=0 "
     "pip install --no-build-isolation \"lmforge[deepspeed]\"), or remove deepspeed."),
    ("fp8 without an FP8 GPU", ["train", *TRAIN, "dataset=good", "fp8=true"], 1,
     "lmforge train: error: fp8 needs an NVIDIA GPU with FP8 units (compute capability 8.9 or newer: Ada, Hopper or "
     "Blackwell), and this machine has none. Remove fp8; bf16 trains on any recent GPU."),
    ("optimizer package missing", ["train", *TRAIN, "dataset=good", "finetuning_type=full", "use_badam=true"], 1,
     "lmforge train: error: use_badam needs the badam extra: pip install \"lmforge[badam]\""),
    ("fsdp in one process", ["train", *TRAIN, "dataset=good", "fsdp=full_shard"], 1,
     "lmforge train: error: fsdp shards the model across processes: launch several, e.g. FORCE_TORCHRUN=1 "
     "NPROC_PER_NODE=2 lmforge train ..., or remove fsdp."),
    ("val_size and eval_dataset", ["train", *TRAIN, "dataset=good", "val_size=0.1", "eval_dataset=good"], 1,
     "lmforge train: error: Config error: 'val_size' and 'eval_dataset' cannot be used together; choose one."),
    ("probabilities", ["train", *TRAIN, "dataset=good,good", "mix_strategy=interleave_under",
                       "interleave_probs=0.9,0.3"], 1, "lmforge train: error: Config error: 'interleave_probs' (0.9, "
     "0.3) must be non-negative and sum to 1; they sum to 1.2."),
    # datasets: dataset_info.json entries and files
    ("unknown dataset", ["train", *TRAIN, "dataset=godo"], 1, "lmforge train: error: Dataset 'godo' is not defined in "
     "{w}/d/dataset_info.json. Did you mean 'good'? Defined: good, missing_file, bad_json, no_column, bad_format, "
     "all_bad. Add an entry for it to dataset_info.json, or use `dataset_dir: ONLINE` to load 'godo' from the hub."),
    ("missing data file", ["train", *TRAIN, "dataset=missing_file"], 1, "lmforge train: error: Dataset "
     "'missing_file': file {w}/d/nope.json not found. `file_name: nope.json` in {w}/d/dataset_info.json is read "
     "relative to `dataset_dir` ({w}/d); fix the name or move the file there."),
    ("broken data file", ["train", *TRAIN, "dataset=bad_json"], 1, "lmforge train: error: Dataset 'bad_json': cannot "
     "read {w}/d/bad.json: line 1, column 39: Expecting value. Fix the file, or check that its extension matches its "
     "content."),
    ("missing column", ["train", *TRAIN, "dataset=no_column"], 1, "lmforge train: error: Dataset 'no_column' "
     "({w}/d/good.json) has no column 'question' (mapped as `prompt`). Its columns are: instruction, input, output. "
     "Map the right columns in the `columns` of 'no_column' in {w}/d/dataset_info.json, e.g. \"columns\": "
     "{{\"prompt\": \"<column>\"}}."),
    ("misspelt formatting", ["train", *TRAIN, "dataset=bad_format"], 1, "lmforge train: error: Invalid dataset "
     "definition in {w}/d/dataset_info.json: dataset 'bad_format' has formatting 'sharegtp'. Did you mean 'sharegpt'? "
     "Use one of: alpaca, sharegpt, openai."),
    ("every row invalid", ["train", *TRAIN, "dataset=all_bad"], 1, "lmforge train: error: Dataset 'all_bad' "
     "({w}/d/all_bad.json) has no valid rows: all 1 rows were dropped (sharegpt format). Reasons: "
     "invalid_role_order: 1 row (row 0). Likely cause: turns must alternate user (or observation) then assistant (or "
     "function_call), starting with the user."),
    ("broken dataset_info.json", ["train", *TRAIN, "dataset=x", "dataset_dir=d2"], 1, "lmforge train: error: Invalid "
     "JSON in {w}/d2/dataset_info.json at line 1, column 29: Expecting ',' delimiter. Fix the file (a trailing comma "
     "or a missing quote is the usual cause)."),
    ("no dataset_dir", ["train", *TRAIN, "dataset=good", "dataset_dir=nodir"], 1, "lmforge train: error: "
     "dataset_info.json not found in '{w}/nodir' (`dataset_dir: nodir` is read relative to the working directory "
     "{w}). Set `dataset_dir` to the folder that holds it, or use `dataset_dir: ONLINE` to load hub datasets by id."),
    # models and fine-tuning settings
    ("missing model folder", ["train", *TRAIN, "dataset=good", "model_name_or_path=./nomodel"], 1, "lmforge train: "
     "error: Model folder './nomodel' does not exist. Check model_name_or_path, or build a tiny test model with "
     "`lmforge tiny-model DIR`."),
    ("lora target", ["train", *TRAIN, "dataset=good", "lora_target=qq_proj"], 1, "lmforge train: error: lora_target "
     "['qq_proj'] not found in the model; its linear layers are: down_proj, gate_proj, k_proj, o_proj, q_proj, "
     "up_proj, v_proj (or use lora_target: all)."),
    ("freeze layers", ["train", *TRAIN, "dataset=good", "finetuning_type=freeze", "freeze_trainable_layers=99"], 1,
     "lmforge train: error: 'freeze_trainable_layers' must be between 1 and 4 (or -1 and -4), got 99."),
    ("missing adapter", ["train", *TRAIN, "dataset=good", "adapter_name_or_path=noadapter"], 1, "lmforge train: "
     "error: Adapter 'noadapter' not found: expected noadapter/adapter_config.json. Point adapter_name_or_path at a "
     "LoRA training output_dir."),
    # quantization (LLaMA-Factory's rules; a quantized checkpoint's missing libraries)
    ("quantized freeze", ["train", *TRAIN, "dataset=good", "quantization_bit=4", "finetuning_type=freeze"], 1,
     "lmforge train: error: Config error: quantization ('quantization_bit') is only supported with finetuning_type "
     "lora or oft."),
    ("quantized two adapters", ["train", *TRAIN, "dataset=good", "quantization_bit=4", "adapter_name_or_path=a,b"], 1,
     "lmforge train: error: Config error: a quantized model takes one adapter, applied on the fly, but "
     "adapter_name_or_path names 2: merge them into the unquantized base first (lmforge export without "
     "quantization_bit), then load the export with the last one."),
    ("quantized merge", ["chat", "model_name_or_path=MODEL", "quantization_bit=8", "merge_adapters=true"], 1,
     "lmforge chat: error: Config error: 'merge_adapters' cannot merge an adapter into a quantized model: remove "
     "merge_adapters (the adapter is applied on the fly), or export the merged model from the unquantized base "
     "(lmforge export without quantization_bit) and load that quantized."),
    ("quantized export", ["export", *EXPORT, "quantization_bit=4"], 1, "lmforge export: error: Config error: export "
     "writes full-precision weights, and adapters cannot be merged into a quantized model: remove quantization_bit "
     "(export from the unquantized base; for a smaller file use export_format: gguf with gguf_type: q8_0, or "
     "export_quantization_bit for GPTQ)."),
    ("quantization type", ["train", *TRAIN, "dataset=good", "quantization_bit=4", "quantization_type=nf3"], 1,
     "lmforge train: error: Config error: 'quantization_type' is 'nf3', which is not one of: nf4, fp4. Did you mean "
     "'nf4'?"),
    ("quantized device map", ["train", *TRAIN, "dataset=good", "quantization_bit=4", "quantization_device_map=auto"],
     1, "lmforge train: error: Config error: 'quantization_device_map: auto' is for inference only; remove it to "
     "train (each process trains on its own device)."),
    ("eetq on cpu", ["train", *TRAIN, "dataset=good", "quantization_bit=8", "quantization_method=eetq"], 1,
     "lmforge train: error: quantization_method eetq needs a CUDA GPU (its int8 kernels run on CUDA only), and this "
     "machine has none. Use quantization_method: bnb, which also runs on the CPU."),
    ("hqq on cpu", ["chat", "model_name_or_path=MODEL", "quantization_bit=4", "quantization_method=hqq"], 1,
     "lmforge chat: error: quantization_method hqq needs a CUDA GPU: transformers refuses to place HQQ layers on the "
     "CPU. Use quantization_method: bnb, which also runs on the CPU."),
    ("gptq checkpoint", ["chat", "model_name_or_path=gptq"], 1, "lmforge chat: error: 'gptq' is a checkpoint quantized "
     "with GPTQ (its config.json has a quantization_config), and loading it needs gptqmodel and optimum: pip install "
     "\"lmforge[gptq]\" (or pip install gptqmodel==7.6.0 optimum)"),
    ("awq checkpoint", ["train", *TRAIN, "dataset=good", "model_name_or_path=awq"], 1, "lmforge train: error: 'awq' "
     "is a checkpoint quantized with AWQ (its config.json has a quantization_config), and loading it needs gptqmodel: "
     "pip install \"lmforge[gptq]\" (or pip install gptqmodel==7.6.0)"),
    # command-line arguments
    ("unknown command", ["trian"], 2, "lmforge: unknown command 'trian'. Did you mean 'train'? Run `lmforge help` to "
     "list the commands."),
    ("data action", ["data", "show", "x.yaml"], 1, "lmforge data: error: 'show' is not a data action; use preview or "
     "check. Usage: lmforge data {{preview,check}} CONFIG.yaml [key=value ...] [--num N] [--split train|eval] "
     "[--json]"),
    ("data --num", ["data", "preview", *TRAIN, "dataset=good", "--num", "0"], 1, "lmforge data: error: --num must be "
     "at least 1, got 0."),
    ("tiny-model --arch", ["tiny-model", "x", "--arch", "gpt9"], 1, "lmforge tiny-model: error: argument --arch: "
     "invalid choice: 'gpt9' (choose from 'llama', 'qwen2', 'qwen3', 'qwen2_vl', 'qwen2_5_vl'). Usage: lmforge tiny-model [-h] "
     "[--arch {{llama,qwen2,qwen3,qwen2_vl,qwen2_5_vl}}] [--size {{tiny,0.5b}}] [--seed SEED] "
     "[--dtype {{float32,bfloat16}}] output_dir"),
    ("unknown template name", ["templates", "lama3"], 1, "lmforge templates: error: Unknown template 'lama3'. Did you "
     "mean 'llama3'? Run `lmforge templates` to list them."),
    ("eval task", ["eval", "model_name_or_path=MODEL", "template=llama3", "task=mmlu"], 1, "lmforge eval: error: task "
     "'mmlu' is not <name>_<split> with split test, validation or dev (e.g. mmlu_test, cmmlu_test, ceval_validation)."),
    ("predictions file", ["eval-predictions", "nope.jsonl"], 1, "lmforge eval-predictions: error: nope.jsonl does not "
     "exist (expected a generated_predictions.jsonl file)."),
    ("inference backend", ["chat", "model_name_or_path=MODEL", "infer_backend=sglang"], 1, "lmforge chat: error: "
     "Config error: 'infer_backend' is 'sglang', which is not one of: huggingface, vllm, llamacpp."),
    # export settings
    ("no export_dir", ["export", "model_name_or_path=MODEL", "template=llama3"], 1, "lmforge export: error: Config "
     "error: 'export_dir' is required: the folder the exported model is written to."),
    ("gguf type", ["export", *EXPORT, "export_format=gguf", "gguf_type=q4_k"], 1, "lmforge export: error: Config "
     "error: 'gguf_type' is 'q4_k', which is not one of: f32, f16, bf16, q8_0."),
    ("export format", ["export", *EXPORT, "export_format=onnx"], 1, "lmforge export: error: Config error: "
     "'export_format' is 'onnx', which is not one of: safetensors, gguf."),
    ("shard size", ["export", *EXPORT, "export_size=0"], 1, "lmforge export: error: Config error: 'export_size' must "
     "be a positive number of GB, got 0.0."),
    ("legacy format", ["export", *EXPORT, "export_legacy_format=true"], 1, "lmforge export: error: Config error: "
     "'export_legacy_format' (.bin weights) is not available: transformers 5 writes safetensors only. Remove it or "
     "set it to false."),
    ("export into the model", ["export", "model_name_or_path=MODEL", "template=llama3", "export_dir=MODEL"], 1,
     "lmforge export: error: export_dir '{m}' holds the model being exported ('{m}'); choose another export_dir."),
    ("export adapter", ["export", *EXPORT, "adapter_name_or_path=noadapter"], 1, "lmforge export: error: Adapter "
     "'noadapter' not found: expected noadapter/adapter_config.json. Point adapter_name_or_path at a LoRA training "
     "output_dir."),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    # The tiny model as checkpoints quantized beforehand, as their config.json says (the weights stay plain:
    # the libraries that would read them are missing, and that is refused before the weights load).
    for method, extra in (("gptq", {"bits": 4, "group_size": 128}), ("awq", {"bits": 4, "version": "gemm"})):
        shutil.copytree(tiny_llama_dir, root / method)
        config = json.loads((root / method / "config.json").read_text())
        config["quantization_config"] = {"quant_method": method, **extra}
        (root / method / "config.json").write_text(json.dumps(config))
    (root / "bad.yaml").write_text("model_name_or_path: m\nstage: sft\n  bad: [\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    (root / "bad.json").write_text('{"model_name_or_path": "m",}')
    data = root / "d"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({
        "good": {"file_name": "good.json"},
        "missing_file": {"file_name": "nope.json"},
        "bad_json": {"file_name": "bad.json"},
        "no_column": {"file_name": "good.json", "columns": {"prompt": "question"}},
        "bad_format": {"file_name": "good.json", "formatting": "sharegtp"},
        "all_bad": {"file_name": "all_bad.json", "formatting": "sharegpt"},
    }))
    (data / "good.json").write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}] * 4))
    (data / "bad.json").write_text('[{"instruction": "hi", "output": "x"},')
    (data / "all_bad.json").write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "x"}]}]))
    (root / "d2").mkdir()
    (root / "d2" / "dataset_info.json").write_text('{"x": {"file_name": "a.json"')
    return root


def test_the_matrix_is_wide():
    assert len(CASES) >= 40
    assert {argv[0] for _, argv, _, _ in CASES} >= {"train", "data", "export", "chat", "eval", "templates",
                                                   "tiny-model", "eval-predictions", "trian"}


@pytest.mark.parametrize("name,argv,code,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(name, argv, code, expected, workspace, tiny_llama_dir, monkeypatch, capsys):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # As on a machine without the optional DeepSpeed package (it may be installed here).
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    monkeypatch.setitem(sys.modules, "badam", None)  # likewise the badam extra
    for module in ("gptqmodel", "optimum"):  # and the quantization extra's GPTQ / AWQ libraries
        monkeypatch.setitem(sys.modules, module, None)
    if any(arg.startswith(("quantization_method=", "fp8=")) for arg in argv):
        # The refusals of a machine without CUDA, wherever the suite runs.
        monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    before = sorted(p.relative_to(workspace) for p in workspace.rglob("*"))
    argv = [a.replace("MODEL", str(tiny_llama_dir)) for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.rstrip("\n").splitlines()[-1]
    assert last == expected.format(w=workspace, m=tiny_llama_dir)
    # Nothing half-written: the workspace holds exactly what it held before.
    assert sorted(p.relative_to(workspace) for p in workspace.rglob("*")) == before
