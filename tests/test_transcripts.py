"""The scripted transcripts the tiny model is trained on: rendered by the product's own path."""

import json
import random
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from agent.testing.transcripts import (
    CAPTURED_LOCAL_TIMEZONE,
    SCHEMAS_PATH,
    TASKS,
    capture_default_schemas,
    encode_transcript,
    fetch_task_for,
    load_tool_schemas,
    page_sentence,
    render_transcript,
    time_task,
    value_token_ids,
)

TOOL_KINDS = sorted(set(TASKS) - {"greeting"})


def test_committed_schemas_are_what_the_default_tools_offer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Real MCP servers (uvx), the kernel tool and the shipped plugins: if a server's schema
    drifts, the tiny model no longer sees the prompt `agent run` sends."""
    monkeypatch.setenv("AGENT_HOME", str(tmp_path))
    monkeypatch.delenv("AGENT_TOOLS_PATH", raising=False)
    assert capture_default_schemas() == json.loads(SCHEMAS_PATH.read_text())


def test_local_timezone_is_swapped_into_the_time_schemas() -> None:
    text = json.dumps(load_tool_schemas("Asia/Tokyo"))
    assert "Use 'Asia/Tokyo' as local timezone" in text
    assert f"'{CAPTURED_LOCAL_TIMEZONE}'" not in text


@pytest.mark.parametrize("kind", TOOL_KINDS)
def test_a_tool_task_renders_a_call_then_the_result(
    kind: str, qwen3_tokenizer: PreTrainedTokenizerFast
) -> None:
    transcript = TASKS[kind](random.Random(kind), False)
    (first_prompt, call), (second_prompt, answer) = render_transcript(
        transcript, qwen3_tokenizer, load_tool_schemas()
    )
    assert first_prompt.endswith(
        f"<|im_start|>user\n{transcript.user}<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert "<tools>" in first_prompt and '"name": "calculator"' in first_prompt
    assert call.startswith("<tool_call>\n{") and call.endswith("}\n</tool_call>")
    # The next prompt holds the call as Qwen-Agent parsed it, and the tool's result.
    assert second_prompt.startswith(first_prompt.removesuffix("<think>\n\n</think>\n\n"))
    assert f"{call}<|im_end|>\n" in second_prompt
    assert f"<tool_response>\n{transcript.results[0]}\n</tool_response>" in second_prompt
    assert transcript.quoted in answer


def test_thinking_mode_keeps_this_turns_thoughts(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    transcript = time_task(random.Random(1), thinking=True)
    (first_prompt, call), (second_prompt, answer) = render_transcript(
        transcript, qwen3_tokenizer, load_tool_schemas()
    )
    assert first_prompt.endswith("<|im_start|>assistant\n")
    assert call.startswith("<think>\n") and "</think>\n\n<tool_call>" in call
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in second_prompt
    assert answer.startswith("<think>\n") and answer.endswith(f"{transcript.quoted}.")


def test_greeting_is_answered_without_a_tool(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    transcript = TASKS["greeting"](random.Random(2), False)
    [(prompt, answer)] = render_transcript(transcript, qwen3_tokenizer, load_tool_schemas())
    assert "<tool_call>" not in answer and transcript.user in prompt


def test_encoded_outputs_end_the_turn(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    examples = encode_transcript(
        fetch_task_for("http://127.0.0.1:8080/a.html", "Hi there 42."), qwen3_tokenizer
    )
    assert [qwen3_tokenizer.decode(ex.target[-1:]) for ex in examples] == ["<|im_end|>"] * 2
    assert qwen3_tokenizer.decode(examples[1].target[:-1]) == "The page says:\nHi there 42."


def test_every_value_token_is_known(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    known = value_token_ids(qwen3_tokenizer) | set(qwen3_tokenizer(".")["input_ids"])
    rng = random.Random(3)
    for _ in range(200):
        sentence = page_sentence(rng)
        for text in (sentence, f"Contents of x:\n{sentence}", f"says: {sentence}"):
            ids = qwen3_tokenizer(text)["input_ids"]
            assert set(ids[-len(qwen3_tokenizer(sentence)["input_ids"]) + 1 :]) <= known
