"""The native engine's tokenizer: the same prompts and token ids as transformers' tokenizer."""

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from agent.engine.tokenizer import FastTokenizer

CALL = {"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "你好 👋"}],
    [
        {"role": "user", "content": "What time is it in Tokyo?"},
        {"role": "assistant", "content": "<think>\nA tool.\n</think>\n\nLet me check."},
        {"role": "user", "content": "<tool_response>\n09:30\n</tool_response>"},
    ],
    [
        {"role": "user", "content": "Time? /no_think"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": CALL}]},
        {"role": "tool", "content": '{"time": "09:30"}'},
        {"role": "assistant", "content": "It is 09:30.", "reasoning_content": "Easy."},
        {"role": "user", "content": "Thanks"},
    ],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("thinking", [True, False])
def test_prompts_and_ids_equal_transformers(tiny_gptq: Path, conversation, thinking) -> None:
    ours, theirs = FastTokenizer.from_dir(tiny_gptq), AutoTokenizer.from_pretrained(tiny_gptq)
    kwargs = {"tokenize": False, "add_generation_prompt": True, "enable_thinking": thinking}
    prompt = ours.apply_chat_template(conversation, **kwargs)
    assert prompt == theirs.apply_chat_template(conversation, **kwargs)
    ids = ours(prompt)["input_ids"]
    assert ids == theirs(prompt, add_special_tokens=False)["input_ids"]
    assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(
        ids, skip_special_tokens=True
    )


def test_tools_render_as_transformers_renders_them(tiny_gptq: Path) -> None:
    ours, theirs = FastTokenizer.from_dir(tiny_gptq), AutoTokenizer.from_pretrained(tiny_gptq)
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
    kwargs = {"tokenize": False, "add_generation_prompt": True, "tools": [tool]}
    assert ours.apply_chat_template(CONVERSATIONS[0], **kwargs) == theirs.apply_chat_template(
        CONVERSATIONS[0], **kwargs
    )


def test_special_token_ids(tiny_gptq: Path) -> None:
    ours = FastTokenizer.from_dir(tiny_gptq)
    assert ours.eos_token_id == 151645
    assert ours.convert_tokens_to_ids("</think>") == 151668
