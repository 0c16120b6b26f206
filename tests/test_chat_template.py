"""Our Qwen3 chat template renders the prompts Qwen3's official template renders."""

import json

import pytest
from qwen_agent.llm.fncall_prompts.nous_fncall_prompt import FN_CALL_TEMPLATE, NousFnCallPrompt
from qwen_agent.llm.schema import ContentItem, FunctionCall, Message
from transformers import PreTrainedTokenizerFast

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time in a timezone.",
        "parameters": {
            "type": "object",
            "properties": {"tz": {"type": "string"}},
            "required": ["tz"],
        },
    },
}
TOOLS_BLOCK = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_time", "description": "Current time in a '
    'timezone.", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, '
    '"required": ["tz"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@pytest.fixture
def render(qwen3_tokenizer: PreTrainedTokenizerFast):
    def render(messages: list[dict], **kwargs) -> str:
        return qwen3_tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)

    return render


def test_system_and_user_without_thinking(render) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Hi!"}]
    assert render(messages, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


@pytest.mark.parametrize("switch", [{"enable_thinking": True}, {}])
def test_system_and_user_with_thinking(render, switch: dict) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Hi!"}]
    assert render(messages, add_generation_prompt=True, **switch) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHi!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_no_system_turn_and_no_generation_prompt(render) -> None:
    assert render([{"role": "user", "content": "Hi!"}]) == "<|im_start|>user\nHi!<|im_end|>\n"


def test_thinking_of_earlier_turns_is_dropped(render) -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nEasy: 4.\n</think>\n\n4"},
        {"role": "user", "content": "Times 3?"},
        {"role": "assistant", "content": "12", "reasoning_content": "4 * 3 = 12."},
    ]
    assert render(messages) == (
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nTimes 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n4 * 3 = 12.\n</think>\n\n12<|im_end|>\n"
    )


def test_tool_call_and_tool_responses(render) -> None:
    call = {"type": "function", "function": {"name": "get_time", "arguments": {"tz": "UTC"}}}
    messages = [
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "content": "<think>\nAsk the tool.\n</think>\n\n",
            "tool_calls": [call],
        },
        {"role": "tool", "content": '{"time": "09:30"}'},
        {"role": "tool", "content": "second result"},
        {"role": "assistant", "content": "<think>\nGot it.\n</think>\n\nIt is 09:30."},
    ]
    assert render(messages, add_generation_prompt=False) == (
        "<|im_start|>user\nTime?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nAsk the tool.\n</think>\n\n"
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>\n'
        '<|im_start|>user\n<tool_response>\n{"time": "09:30"}\n</tool_response>\n'
        "<tool_response>\nsecond result\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\nGot it.\n</think>\n\nIt is 09:30.<|im_end|>\n"
    )


def test_text_before_a_tool_call_and_string_arguments(render) -> None:
    call = {"name": "get_time", "arguments": '{"tz": "Asia/Tokyo"}'}
    messages = [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
    ]
    assert render(messages).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nChecking.\n"
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Asia/Tokyo"}}\n</tool_call>'
        "<|im_end|>\n"
    )


def test_tools_block_in_the_system_turn(render) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Time?"}]
    expected_system = f"{SYSTEM['content']}\n\n{TOOLS_BLOCK}"
    assert render(messages, tools=[TIME_TOOL], add_generation_prompt=True) == (
        f"<|im_start|>system\n{expected_system}<|im_end|>\n"
        "<|im_start|>user\nTime?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tools_block_is_qwen_agents_text() -> None:
    assert FN_CALL_TEMPLATE.format(tool_descs=json.dumps(TIME_TOOL)) == TOOLS_BLOCK


def test_tools_without_a_system_message(render) -> None:
    rendered = render([{"role": "user", "content": "Time?"}], tools=[TIME_TOOL])
    assert rendered.startswith(f"<|im_start|>system\n{TOOLS_BLOCK}<|im_end|>\n<|im_start|>user\n")


def test_qwen_agent_prompt_renders_like_structured_tools(render) -> None:
    """NousFnCallPrompt writes tools and results as text; the prompt must not change."""
    call = FunctionCall(name="get_time", arguments='{"tz": "UTC"}')
    history = [
        Message("system", [ContentItem(text=SYSTEM["content"])]),
        Message("user", [ContentItem(text="Time?")]),
        Message("assistant", [ContentItem(text="Checking.")]),
        Message("assistant", [], function_call=call),
        Message("function", [ContentItem(text="09:30")], name="get_time"),
        Message("function", [ContentItem(text="UTC")], name="get_time"),
    ]
    prompt_messages = NousFnCallPrompt().preprocess_fncall_messages(
        history, functions=[TIME_TOOL["function"]], lang="en"
    )
    as_text = [
        {"role": m.role, "content": "".join(i.text for i in m.content)} for m in prompt_messages
    ]
    structured = [
        SYSTEM,
        {"role": "user", "content": "Time?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [{"function": {"name": "get_time", "arguments": {"tz": "UTC"}}}],
        },
        {"role": "tool", "content": "09:30"},
        {"role": "tool", "content": "UTC"},
    ]
    for thinking in (True, False):
        rendered = render(as_text, add_generation_prompt=True, enable_thinking=thinking)
        assert rendered == render(
            structured, tools=[TIME_TOOL], add_generation_prompt=True, enable_thinking=thinking
        )
    assert "<|im_start|>assistant\nChecking.\n<tool_call>\n" in rendered
