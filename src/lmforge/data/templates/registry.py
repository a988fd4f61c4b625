"""The table of named templates, with LLaMA-Factory's exact strings (data/template.py, v0.9.x).

These strings are compatibility data: a model fine-tuned with LLaMA-Factory's `template: qwen` must
see the same tokens here. `register` fills in LLaMA-Factory's defaults for omitted formatters:
user `{{content}}`; assistant `{{content}}` + EOS (no EOS with `efficient_eos`); system
`{{content}}`; observation = the user formatter; function = the assistant slots; prefix empty.
"""

from __future__ import annotations

from .slots import BOS, EOS, Formatter, Slot, Token
from .template import Template

TEMPLATES: dict[str, Template] = {}


def _slots(value: str | tuple[Slot, ...] | None) -> tuple[Slot, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


def register(
    name: str,
    *,
    user: str | tuple[Slot, ...] | None = None,
    assistant: str | tuple[Slot, ...] | None = None,
    system: str | tuple[Slot, ...] | None = None,
    function: str | tuple[Slot, ...] | None = None,
    observation: str | tuple[Slot, ...] | None = None,
    prefix: str | tuple[Slot, ...] | None = None,
    **options,
) -> None:
    """Add a template to the table, applying LLaMA-Factory's defaults for omitted formatters."""
    if name in TEMPLATES:
        raise ValueError(f"Template {name} is registered twice.")
    efficient_eos = options.get("efficient_eos", False)
    default_assistant: tuple[Slot, ...] = ("{{content}}",) if efficient_eos else ("{{content}}", EOS)
    user_slots = _slots(user) or ("{{content}}",)
    assistant_slots = _slots(assistant) or default_assistant
    TEMPLATES[name] = Template(
        name=name,
        format_user=Formatter(user_slots),
        format_assistant=Formatter(assistant_slots),
        format_system=Formatter(_slots(system) or ("{{content}}",)),
        format_function=Formatter(_slots(function) or assistant_slots),
        format_observation=Formatter(_slots(observation) or user_slots),
        format_prefix=Formatter(_slots(prefix) or ()),
        **options,
    )


CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
CHATML_ASSISTANT = "{{content}}<|im_end|>\n"
CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"
CHATML_OBSERVATION = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
QWEN_OBSERVATION = "<|im_start|>user\n<tool_response>\n{{content}}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
QWEN = dict(
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    function=CHATML_ASSISTANT,
    observation=QWEN_OBSERVATION,
    tool_format="qwen",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
LLAMA3 = dict(
    user="<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    assistant="{{content}}<|eot_id|>",
    system="<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",
    function="{{content}}<|eot_id|>",
    observation=(
        "<|start_header_id|>ipython<|end_header_id|>\n\n{{content}}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    tool_format="llama3",
    prefix=(BOS,),
    stop_words=("<|eot_id|>", "<|eom_id|>"),
    replace_eos=True,
)
GEMMA = dict(
    user="<start_of_turn>user\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
    assistant="{{content}}<end_of_turn>\n",
    system="{{content}}\n\n",
    observation="<start_of_turn>tool\n{{content}}<end_of_turn>\n<start_of_turn>model\n",
    prefix=(BOS,),
    fuse_system=True,
)
GLM4 = dict(
    user="<|user|>\n{{content}}<|assistant|>",
    assistant="\n{{content}}",
    system="<|system|>\n{{content}}",
    function="{{content}}",
    observation="<|observation|>\n{{content}}<|assistant|>",
    tool_format="glm4",
    prefix="[gMASK]<sop>",
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
)
MISTRAL_TOOLS = dict(tool_format="mistral", prefix=(BOS,))
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
INTERNLM_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI Laboratory "
    "(上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language "
    "chosen by the user such as English and 中文."
)


register(
    "alpaca",
    user="### Instruction:\n{{content}}\n\n### Response:\n",
    assistant=("{{content}}", EOS, "\n\n"),
    default_system=(
        "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    ),
    replace_jinja_template=True,
)
register("baichuan2", user="<reserved_106>{{content}}<reserved_107>", efficient_eos=True)
register(
    "chatglm3",
    user=(Token("<|user|>"), "\n", "{{content}}", Token("<|assistant|>")),
    assistant=("\n", "{{content}}"),
    system=(Token("<|system|>"), "\n", "{{content}}"),
    function="{{content}}",
    observation=(Token("<|observation|>"), "\n", "{{content}}", Token("<|assistant|>")),
    tool_format="glm4",
    prefix=(Token("[gMASK]"), Token("sop")),
    stop_words=("<|user|>", "<|observation|>"),
    efficient_eos=True,
)
register(
    "chatml",
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    observation=CHATML_OBSERVATION,
    stop_words=("<|im_end|>", "<|im_start|>"),
    replace_eos=True,
    replace_jinja_template=True,
)
register(
    "cohere",
    user="<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    system="<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{content}}<|END_OF_TURN_TOKEN|>",
    prefix=(BOS,),
)
register("deepseek", user="User: {{content}}\n\nAssistant:", system="{{content}}\n\n", prefix=(BOS,))
register("deepseek3", user="<｜User｜>{{content}}<｜Assistant｜>", prefix=(BOS,))
register("deepseekr1", user="<｜User｜>{{content}}<｜Assistant｜>", prefix=(BOS,), reasoning=True)
register(
    "default",
    user=("Human: {{content}}", EOS, "\nAssistant:"),
    assistant=("{{content}}", EOS, "\n"),
    system=("System: {{content}}", EOS, "\n"),
    replace_jinja_template=True,
)
register("empty", assistant="{{content}}")
register("falcon", user="User: {{content}}\nFalcon:", assistant="{{content}}\n", efficient_eos=True)
register("fewshot", assistant="{{content}}\n\n", efficient_eos=True, replace_jinja_template=True)
register("gemma", **GEMMA, stop_words=("<end_of_turn>",), replace_eos=True)
register("gemma2", **GEMMA, stop_words=("<eos>", "<end_of_turn>"), efficient_eos=True)
register("gemma3", **GEMMA, stop_words=("<end_of_turn>",), replace_eos=True)
register("glm4", **GLM4)
register(
    "granite3",
    user="<|start_of_role|>user<|end_of_role|>{{content}}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
    assistant="{{content}}<|end_of_text|>\n",
    system="<|start_of_role|>system<|end_of_role|>{{content}}<|end_of_text|>\n",
)
register(
    "intern2",
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    prefix=(BOS,),
    default_system=INTERNLM_SYSTEM,
    stop_words=("<|im_end|>",),
)
register(
    "llama2",
    user=(BOS, "[INST] {{content}} [/INST]"),
    system="<<SYS>>\n{{content}}\n<</SYS>>\n\n",
    fuse_system=True,
)
register("llama3", **LLAMA3)
register(
    "llama4",
    user="<|header_start|>user<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
    assistant="{{content}}<|eot|>",
    system="<|header_start|>system<|header_end|>\n\n{{content}}<|eot|>",
    function="{{content}}<|eot|>",
    observation="<|header_start|>ipython<|header_end|>\n\n{{content}}<|eot|><|header_start|>assistant<|header_end|>\n\n",
    tool_format="llama3",
    prefix=(BOS,),
    stop_words=("<|eot|>", "<|eom|>"),
    replace_eos=True,
)
register(
    "ministral",
    user="[INST]{{content}}[/INST]",
    system="{{content}}\n\n",
    function=("[TOOL_CALLS]{{content}}", EOS),
    observation='[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',
    fuse_system=True,
    **MISTRAL_TOOLS,
)
register(
    "mistral",
    user="[INST] {{content}}[/INST]",
    assistant=(" {{content}}", EOS),
    system="{{content}}\n\n",
    function=("[TOOL_CALLS] {{content}}", EOS),
    observation='[TOOL_RESULTS] {"content": {{content}}}[/TOOL_RESULTS]',
    fuse_system=True,
    **MISTRAL_TOOLS,
)
register(
    "mistral_small",
    user="[INST]{{content}}[/INST]",
    system="[SYSTEM_PROMPT]{{content}}[/SYSTEM_PROMPT]",
    function=("[TOOL_CALLS]{{content}}", EOS),
    observation='[TOOL_RESULTS]{"content": {{content}}}[/TOOL_RESULTS]',
    **MISTRAL_TOOLS,
)
register("olmo", user="<|user|>\n{{content}}<|assistant|>\n", prefix=(EOS,))
register("openchat", user=("GPT4 Correct User: {{content}}", EOS, "GPT4 Correct Assistant:"), prefix=(BOS,))
register(
    "phi",
    user="<|user|>\n{{content}}<|end|>\n<|assistant|>\n",
    assistant="{{content}}<|end|>\n",
    system="<|system|>\n{{content}}<|end|>\n",
    stop_words=("<|end|>",),
    replace_eos=True,
)
register(
    "phi4",
    user="<|im_start|>user<|im_sep|>{{content}}<|im_end|><|im_start|>assistant<|im_sep|>",
    assistant="{{content}}<|im_end|>",
    system="<|im_start|>system<|im_sep|>{{content}}<|im_end|>",
    stop_words=("<|im_end|>",),
    replace_eos=True,
)
register("qwen", **QWEN, default_system="You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
register("qwen2_vl", **QWEN, default_system="You are a helpful assistant.", mm_plugin="qwen2_vl")
register("qwen3", **QWEN, reasoning=True)
register("qwen3_nothink", **QWEN)
register("qwen3_vl", **QWEN, reasoning=True)
register("qwen3_vl_nothink", **QWEN)
register(
    "smollm",
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
)
register(
    "smollm2",
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face.",
)
register(
    "solar",
    user="### User:\n{{content}}\n\n### Assistant:\n",
    system="### System:\n{{content}}\n\n",
    efficient_eos=True,
)
register(
    "starchat",
    user="<|user|>\n{{content}}<|end|>\n<|assistant|>",
    assistant="{{content}}<|end|>\n",
    system="<|system|>\n{{content}}<|end|>\n",
    stop_words=("<|end|>",),
)
register("vicuna", user="USER: {{content}} ASSISTANT:", default_system=VICUNA_SYSTEM, replace_jinja_template=True)
register(
    "yi",
    user=CHATML_USER,
    assistant=CHATML_ASSISTANT,
    system=CHATML_SYSTEM,
    stop_words=("<|im_end|>",),
)
register(
    "zephyr",
    user=("<|user|>\n{{content}}", EOS, "<|assistant|>\n"),
    system=("<|system|>\n{{content}}", EOS),
    default_system="You are Zephyr, a helpful assistant.",
)
