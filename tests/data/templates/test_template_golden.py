"""Golden renders: every registered template on one fixed conversation, exact (prompt, answer) strings.

Rendered with the tiny llama tokenizer after `fix_tokenizer` (BOS `<|begin_of_text|>`, EOS
`<|end_of_text|>` unless the template's replace_eos makes its first stop word the EOS).
"""

from __future__ import annotations

import pytest

from lmforge.data.templates import get_template, list_templates

S = "You are a careful assistant."
CHATML = [
    (
        f"<|im_start|>system\n{S}<|im_end|>\n<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n",
        "I am fine!<|im_end|>\n",
    ),
    ("<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n", "很高兴认识你！<|im_end|>\n"),
]
CHATML_THINK = [
    (CHATML[0][0], "<think>\n\n</think>\n\nI am fine!<|im_end|>\n"),
    (CHATML[1][0], "<think>\n\n</think>\n\n很高兴认识你！<|im_end|>\n"),
]
GEMMA = [
    (
        f"<|begin_of_text|><start_of_turn>user\n{S}\n\nHow are you<end_of_turn>\n<start_of_turn>model\n",
        "I am fine!<end_of_turn>\n",
    ),
    ("<start_of_turn>user\n你好<end_of_turn>\n<start_of_turn>model\n", "很高兴认识你！<end_of_turn>\n"),
]
DEEPSEEK3 = [
    (f"<|begin_of_text|>{S}<｜User｜>How are you<｜Assistant｜>", "I am fine!<|end_of_text|>"),
    ("<｜User｜>你好<｜Assistant｜>", "很高兴认识你！<|end_of_text|>"),
]

GOLDEN = {
    "alpaca": [
        (f"{S}### Instruction:\nHow are you\n\n### Response:\n", "I am fine!<|end_of_text|>\n\n"),
        ("### Instruction:\n你好\n\n### Response:\n", "很高兴认识你！<|end_of_text|>\n\n"),
    ],
    "baichuan2": [
        (f"{S}<reserved_106>How are you<reserved_107>", "I am fine!"),
        ("<reserved_106>你好<reserved_107>", "很高兴认识你！"),
    ],
    "chatglm3": [
        (f"[gMASK]sop<|system|>\n{S}<|user|>\nHow are you<|assistant|>", "\nI am fine!"),
        ("<|user|>\n你好<|assistant|>", "\n很高兴认识你！"),
    ],
    "chatml": CHATML,
    "cohere": [
        (
            f"<|begin_of_text|><|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{S}<|END_OF_TURN_TOKEN|>"
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>How are you<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            "I am fine!<|end_of_text|>",
        ),
        (
            "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>你好<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
            "很高兴认识你！<|end_of_text|>",
        ),
    ],
    "deepseek": [
        (f"<|begin_of_text|>{S}\n\nUser: How are you\n\nAssistant:", "I am fine!<|end_of_text|>"),
        ("User: 你好\n\nAssistant:", "很高兴认识你！<|end_of_text|>"),
    ],
    "deepseek3": DEEPSEEK3,
    "deepseekr1": [
        (DEEPSEEK3[0][0], "<think>\n\n</think>\n\nI am fine!<|end_of_text|>"),
        (DEEPSEEK3[1][0], "<think>\n\n</think>\n\n很高兴认识你！<|end_of_text|>"),
    ],
    "default": [
        (f"System: {S}<|end_of_text|>\nHuman: How are you<|end_of_text|>\nAssistant:", "I am fine!<|end_of_text|>\n"),
        ("Human: 你好<|end_of_text|>\nAssistant:", "很高兴认识你！<|end_of_text|>\n"),
    ],
    "empty": [(f"{S}How are you", "I am fine!"), ("你好", "很高兴认识你！")],
    "falcon": [(f"{S}User: How are you\nFalcon:", "I am fine!\n"), ("User: 你好\nFalcon:", "很高兴认识你！\n")],
    "fewshot": [(f"{S}How are you", "I am fine!\n\n"), ("你好", "很高兴认识你！\n\n")],
    "gemma": GEMMA,
    "gemma2": GEMMA,
    "gemma3": GEMMA,
    "glm4": [
        (f"[gMASK]<sop><|system|>\n{S}<|user|>\nHow are you<|assistant|>", "\nI am fine!"),
        ("<|user|>\n你好<|assistant|>", "\n很高兴认识你！"),
    ],
    "granite3": [
        (
            f"<|start_of_role|>system<|end_of_role|>{S}<|end_of_text|>\n"
            "<|start_of_role|>user<|end_of_role|>How are you<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
            "I am fine!<|end_of_text|>\n",
        ),
        (
            "<|start_of_role|>user<|end_of_role|>你好<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>",
            "很高兴认识你！<|end_of_text|>\n",
        ),
    ],
    "intern2": [("<|begin_of_text|>" + CHATML[0][0], CHATML[0][1]), CHATML[1]],
    "llama2": [
        (f"<|begin_of_text|>[INST] <<SYS>>\n{S}\n<</SYS>>\n\nHow are you [/INST]", "I am fine!<|end_of_text|>"),
        ("<|begin_of_text|>[INST] 你好 [/INST]", "很高兴认识你！<|end_of_text|>"),
    ],
    "llama3": [
        (
            f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{S}<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "I am fine!<|eot_id|>",
        ),
        (
            "<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "很高兴认识你！<|eot_id|>",
        ),
    ],
    "llama4": [
        (
            f"<|begin_of_text|><|header_start|>system<|header_end|>\n\n{S}<|eot|>"
            "<|header_start|>user<|header_end|>\n\nHow are you<|eot|><|header_start|>assistant<|header_end|>\n\n",
            "I am fine!<|eot|>",
        ),
        (
            "<|header_start|>user<|header_end|>\n\n你好<|eot|><|header_start|>assistant<|header_end|>\n\n",
            "很高兴认识你！<|eot|>",
        ),
    ],
    "ministral": [
        (f"<|begin_of_text|>[INST]{S}\n\nHow are you[/INST]", "I am fine!<|end_of_text|>"),
        ("[INST]你好[/INST]", "很高兴认识你！<|end_of_text|>"),
    ],
    "mistral": [
        (f"<|begin_of_text|>[INST] {S}\n\nHow are you[/INST]", " I am fine!<|end_of_text|>"),
        ("[INST] 你好[/INST]", " 很高兴认识你！<|end_of_text|>"),
    ],
    "mistral_small": [
        (f"<|begin_of_text|>[SYSTEM_PROMPT]{S}[/SYSTEM_PROMPT][INST]How are you[/INST]", "I am fine!<|end_of_text|>"),
        ("[INST]你好[/INST]", "很高兴认识你！<|end_of_text|>"),
    ],
    "olmo": [
        (f"<|end_of_text|>{S}<|user|>\nHow are you<|assistant|>\n", "I am fine!<|end_of_text|>"),
        ("<|user|>\n你好<|assistant|>\n", "很高兴认识你！<|end_of_text|>"),
    ],
    "openchat": [
        (
            f"<|begin_of_text|>{S}GPT4 Correct User: How are you<|end_of_text|>GPT4 Correct Assistant:",
            "I am fine!<|end_of_text|>",
        ),
        ("GPT4 Correct User: 你好<|end_of_text|>GPT4 Correct Assistant:", "很高兴认识你！<|end_of_text|>"),
    ],
    "phi": [
        (f"<|system|>\n{S}<|end|>\n<|user|>\nHow are you<|end|>\n<|assistant|>\n", "I am fine!<|end|>\n"),
        ("<|user|>\n你好<|end|>\n<|assistant|>\n", "很高兴认识你！<|end|>\n"),
    ],
    "phi4": [
        (
            f"<|im_start|>system<|im_sep|>{S}<|im_end|><|im_start|>user<|im_sep|>How are you<|im_end|>"
            "<|im_start|>assistant<|im_sep|>",
            "I am fine!<|im_end|>",
        ),
        ("<|im_start|>user<|im_sep|>你好<|im_end|><|im_start|>assistant<|im_sep|>", "很高兴认识你！<|im_end|>"),
    ],
    "qwen": CHATML,
    "qwen2_vl": CHATML,
    "qwen3": CHATML_THINK,
    "qwen3_nothink": CHATML,
    "qwen3_vl": CHATML_THINK,
    "qwen3_vl_nothink": CHATML,
    "smollm": CHATML,
    "smollm2": CHATML,
    "solar": [
        (f"### System:\n{S}\n\n### User:\nHow are you\n\n### Assistant:\n", "I am fine!"),
        ("### User:\n你好\n\n### Assistant:\n", "很高兴认识你！"),
    ],
    "starchat": [
        (f"<|system|>\n{S}<|end|>\n<|user|>\nHow are you<|end|>\n<|assistant|>", "I am fine!<|end|>\n"),
        ("<|user|>\n你好<|end|>\n<|assistant|>", "很高兴认识你！<|end|>\n"),
    ],
    "vicuna": [
        (f"{S}USER: How are you ASSISTANT:", "I am fine!<|end_of_text|>"),
        ("USER: 你好 ASSISTANT:", "很高兴认识你！<|end_of_text|>"),
    ],
    "yi": CHATML,
    "zephyr": [
        (
            f"<|system|>\n{S}<|end_of_text|><|user|>\nHow are you<|end_of_text|><|assistant|>\n",
            "I am fine!<|end_of_text|>",
        ),
        ("<|user|>\n你好<|end_of_text|><|assistant|>\n", "很高兴认识你！<|end_of_text|>"),
    ],
}


def test_every_template_has_a_golden_render():
    assert sorted(GOLDEN) == list_templates()


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_render(name, llama_tokenizer, conversation):
    system, messages = conversation
    template = get_template(name)
    template.fix_tokenizer(llama_tokenizer)
    assert template.render_multiturn(llama_tokenizer, messages, system=system) == GOLDEN[name]


# ---- LLaMA-Factory's own acceptance strings (reference §2.3) ------------------------------------

LLAMA3_PROMPT = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nI am fine!<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)


def test_llama3_oneturn_acceptance(llama_tokenizer, conversation):
    _, messages = conversation
    template = get_template("llama3")
    template.fix_tokenizer(llama_tokenizer)
    prompt_ids, answer_ids = template.encode_oneturn(llama_tokenizer, messages)
    assert template.render_oneturn(llama_tokenizer, messages) == (LLAMA3_PROMPT, "很高兴认识你！<|eot_id|>")
    for ids, text in ((prompt_ids, LLAMA3_PROMPT), (answer_ids, "很高兴认识你！<|eot_id|>")):
        assert llama_tokenizer.encode(text, add_special_tokens=False) == ids
        assert llama_tokenizer.decode(ids) == text


def test_llama3_multiturn_acceptance(llama_tokenizer, conversation):
    _, messages = conversation
    template = get_template("llama3")
    template.fix_tokenizer(llama_tokenizer)
    texts = [
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow are you<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "I am fine!<|eot_id|>",
        "<|start_header_id|>user<|end_header_id|>\n\n你好<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "很高兴认识你！<|eot_id|>",
    ]
    pairs = template.encode_multiturn(llama_tokenizer, messages)
    ids = [pairs[0][0], pairs[0][1], pairs[1][0], pairs[1][1]]
    for token_ids, text in zip(ids, texts, strict=True):
        assert llama_tokenizer.encode(text, add_special_tokens=False) == token_ids
        assert llama_tokenizer.decode(token_ids) == text


def test_llama3_stop_token_ids(llama_tokenizer):
    template = get_template("llama3")
    template.fix_tokenizer(llama_tokenizer)
    expected = {
        llama_tokenizer.convert_tokens_to_ids("<|eot_id|>"),
        llama_tokenizer.convert_tokens_to_ids("<|eom_id|>"),
    }
    assert set(template.stop_token_ids(llama_tokenizer)) == expected


def test_qwen_default_system_acceptance(qwen_tokenizer, conversation):
    _, messages = conversation
    template = get_template("qwen")
    template.fix_tokenizer(qwen_tokenizer)
    prompt, answer = template.render_oneturn(qwen_tokenizer, messages)
    assert prompt == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\nI am fine!<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    )
    assert answer == "很高兴认识你！<|im_end|>\n"


QWEN3_PROMPT = (
    "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\nI am fine!<|im_end|>\n"
    "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
)
WITH_THOUGHT = [
    {"role": "user", "content": "How are you"},
    {"role": "assistant", "content": "<think>\nModel thought here\n</think>\n\nI am fine!"},
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "<think>\n模型思考内容\n</think>\n\n很高兴认识你！"},
]


@pytest.mark.parametrize("cot", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False, None])
def test_qwen3_oneturn(qwen_tokenizer, conversation, cot, enable_thinking):
    _, plain = conversation
    template = get_template("qwen3", enable_thinking=enable_thinking)
    template.fix_tokenizer(qwen_tokenizer)
    prompt, answer = template.render_oneturn(qwen_tokenizer, WITH_THOUGHT if cot else plain)
    if cot and enable_thinking is not False:
        expected = (QWEN3_PROMPT, "<think>\n模型思考内容\n</think>\n\n很高兴认识你！<|im_end|>\n")
    elif enable_thinking:
        expected = (QWEN3_PROMPT, "<think>\n\n</think>\n\n很高兴认识你！<|im_end|>\n")
    else:
        expected = (QWEN3_PROMPT + "<think>\n\n</think>\n\n", "很高兴认识你！<|im_end|>\n")
    assert (prompt, answer) == expected
    prompt_ids, answer_ids = template.encode_oneturn(qwen_tokenizer, WITH_THOUGHT if cot else plain)
    assert qwen_tokenizer.decode(prompt_ids) == prompt and qwen_tokenizer.decode(answer_ids) == answer


@pytest.mark.parametrize("cot", [True, False])
@pytest.mark.parametrize("enable_thinking", [True, False, None])
def test_qwen3_multiturn(qwen_tokenizer, conversation, cot, enable_thinking):
    _, plain = conversation
    template = get_template("qwen3", enable_thinking=enable_thinking)
    pairs = template.render_multiturn(qwen_tokenizer, WITH_THOUGHT if cot else plain)
    source_1 = "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n"
    source_2 = "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    kept = WITH_THOUGHT if cot and enable_thinking is not False else plain
    target_1, target_2 = kept[1]["content"] + "<|im_end|>\n", kept[3]["content"] + "<|im_end|>\n"
    if not cot or enable_thinking is False:
        if enable_thinking:
            target_1, target_2 = "<think>\n\n</think>\n\n" + target_1, "<think>\n\n</think>\n\n" + target_2
        else:
            source_1, source_2 = source_1 + "<think>\n\n</think>\n\n", source_2 + "<think>\n\n</think>\n\n"
    assert pairs == [(source_1, target_1), (source_2, target_2)]


@pytest.mark.parametrize("enable_thinking", [True, False, None])
@pytest.mark.parametrize("discard", [True, False])
def test_qwen3_multiturn_discarding_history_cot(qwen_tokenizer, enable_thinking, discard):
    template = get_template("qwen3", enable_thinking=enable_thinking)
    pairs = template.render_multiturn(qwen_tokenizer, WITH_THOUGHT, discard_history_cot=discard)
    source_1 = "<|im_start|>user\nHow are you<|im_end|>\n<|im_start|>assistant\n"
    source_2 = "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n"
    if enable_thinking is False:
        target_1, target_2 = "I am fine!<|im_end|>\n", "很高兴认识你！<|im_end|>\n"
        if not discard:
            source_1 += "<think>\n\n</think>\n\n"
        source_2 += "<think>\n\n</think>\n\n"
    else:
        target_1 = ("I am fine!" if discard else WITH_THOUGHT[1]["content"]) + "<|im_end|>\n"
        target_2 = WITH_THOUGHT[3]["content"] + "<|im_end|>\n"
    assert pairs == [(source_1, target_1), (source_2, target_2)]


def test_qwen3_preserve_thinking_keeps_history_thoughts(qwen_tokenizer):
    template = get_template("qwen3", preserve_thinking=True)
    prompt, _ = template.render_oneturn(qwen_tokenizer, WITH_THOUGHT)
    assert "<think>\nModel thought here\n</think>\n\nI am fine!" in prompt
    stripped, _ = get_template("qwen3").render_oneturn(qwen_tokenizer, WITH_THOUGHT)
    assert "Model thought here" not in stripped


def test_qwen3_generation_prompt(qwen_tokenizer, conversation):
    _, messages = conversation
    assert get_template("qwen3").render_prompt(qwen_tokenizer, messages[:3]) == QWEN3_PROMPT
    nothink = get_template("qwen3", enable_thinking=False)
    assert nothink.render_prompt(qwen_tokenizer, messages[:3]) == QWEN3_PROMPT + "<think>\n\n</think>\n\n"
    ids = nothink.encode_prompt(qwen_tokenizer, messages[:3])
    assert qwen_tokenizer.decode(ids) == QWEN3_PROMPT + "<think>\n\n</think>\n\n"
