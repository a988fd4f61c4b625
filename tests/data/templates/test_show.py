"""`lmforge templates [NAME] [--model PATH]`: the list, one template's settings and example, and errors."""

from __future__ import annotations

import pytest

from lmforge.cli import main
from lmforge.data.templates import list_templates
from lmforge.data.templates.registry import TEMPLATES

HEADER = "Example (system prompt 'You are a helpful assistant.'; trained text inside [[ ]]):"

LLAMA3 = """\
Template: llama3
  default_system: ""
  stop_words: ["<|eot_id|>", "<|eom_id|>"]
  tool_format: "llama3"
  efficient_eos: false
  replace_eos: true
  enable_thinking: true

Example (system prompt 'You are a helpful assistant.'; trained text inside [[ ]]):
{bos_token}<|start_header_id|>system<|end_header_id|>

You are a helpful assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>

Hi, who are you?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

[[I am an AI assistant.<|eot_id|>]]<|start_header_id|>user<|end_header_id|>

What can you do?<|eot_id|><|start_header_id|>assistant<|end_header_id|>

[[I answer questions.<|eot_id|>]]
"""

QWEN = """\
Template: qwen
  default_system: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
  stop_words: ["<|im_end|>"]
  tool_format: "qwen"
  efficient_eos: false
  replace_eos: true
  enable_thinking: true

Example (system prompt 'You are a helpful assistant.'; trained text inside [[ ]]):
<|im_start|>system
You are a helpful assistant.<|im_end|>
<|im_start|>user
Hi, who are you?<|im_end|>
<|im_start|>assistant
[[I am an AI assistant.<|im_end|>
]]<|im_start|>user
What can you do?<|im_end|>
<|im_start|>assistant
[[I answer questions.<|im_end|>
]]
"""

# The `default` template writes the tokenizer's EOS token in every turn.
DEFAULT_EXAMPLE = """\
System: You are a helpful assistant.{eos}
Human: Hi, who are you?{eos}
Assistant:[[I am an AI assistant.{eos}
]]Human: What can you do?{eos}
Assistant:[[I answer questions.{eos}
]]
"""


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["templates", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_lists_every_template_sorted_one_per_line(capsys):
    code, out, _ = run(capsys)
    assert code == 0
    assert out.splitlines() == sorted(TEMPLATES) == list_templates()
    assert {"llama3", "qwen", "qwen3", "chatml", "alpaca", "default", "empty"} <= set(out.splitlines())


def test_shows_one_template_with_named_special_tokens(capsys):
    code, out, err = run(capsys, "llama3")
    assert (code, err) == (0, "")
    assert out == LLAMA3


def test_model_renders_with_its_real_tokens(capsys, tiny_qwen_dir, tiny_llama_dir):
    code, out, _ = run(capsys, "qwen", "--model", str(tiny_qwen_dir))
    assert code == 0
    assert out == QWEN

    code, out, _ = run(capsys, "llama3", "--model", str(tiny_llama_dir))
    assert code == 0
    assert out == LLAMA3.replace("{bos_token}", "<|begin_of_text|>")


def test_eos_is_named_without_a_model_and_real_with_one(capsys, tiny_qwen_dir):
    _, out, _ = run(capsys, "default")
    assert out.split(HEADER + "\n")[1] == DEFAULT_EXAMPLE.format(eos="{eos_token}")
    _, out, _ = run(capsys, "default", "--model", str(tiny_qwen_dir))
    assert out.split(HEADER + "\n")[1] == DEFAULT_EXAMPLE.format(eos="<|endoftext|>")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["lama3"], "Unknown template 'lama3'. Did you mean 'llama3'? Run `lmforge templates` to list them."),
        (["nothing-like-it"], "Unknown template 'nothing-like-it'. Run `lmforge templates` to list them."),
    ],
)
def test_unknown_template_is_an_error(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err == f"lmforge templates: error: {message}\n"


def test_missing_model_folder_is_an_error(capsys, tmp_path):
    code, out, err = run(capsys, "qwen", "--model", str(tmp_path / "none"))
    assert (code, out) == (1, "")
    assert err == (
        f"lmforge templates: error: Model folder '{tmp_path / 'none'}' does not exist. Check model_name_or_path, "
        "or build a tiny test model with `lmforge tiny-model DIR`.\n"
    )
