"""The local backend on a small GPTQ-quantized Qwen3 checkpoint the test suite builds itself."""

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from qwen_agent.llm.schema import Message

from agent.backends.local import LocalQwen
from agent.engine.loading import load_local_model
from agent.errors import GenerationError
from tests.clirun import agent_argv, agent_cli, agent_env, empty_mcp_config, json_events

GREEDY = {"temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "seed": 0}


def local_llm(model_dir: Path, thinking: bool = False, **generate_cfg) -> LocalQwen:
    cfg = {"model": str(model_dir), "model_type": "agent_local", "device": "cpu"}
    return LocalQwen({**cfg, "thinking": thinking, "generate_cfg": generate_cfg})


def stream(llm: LocalQwen, prompt: str, **generate_cfg) -> list[str]:
    messages = [Message("system", "You are a helpful assistant."), Message("user", prompt)]
    cfg = {**GREEDY, "max_new_tokens": 12, **generate_cfg}
    return [out[-1].content for out in llm._chat_stream(messages, False, cfg)]


def test_gptq_checkpoint_loads_with_the_native_int8_engine(tiny_gptq: Path) -> None:
    loaded = load_local_model(str(tiny_gptq), device="cpu")
    assert loaded.quantization == "gptq int8"
    assert loaded.dtype == "bfloat16"
    assert re.fullmatch(
        r"native \(decode int8( compiled)?, prefill [a-z0-9 ]+, (float32|bf16) KV cache, "
        r"(torch|compiled) attention, int8 lm_head(, one compiled call a decoded token)?\)",
        loaded.kernel,
    ), loaded.kernel
    # The decoded token's single compiled call runs exactly where both compiled kernels do.
    both = "decode int8 compiled" in loaded.kernel and "compiled attention" in loaded.kernel
    assert ("one compiled call" in loaded.kernel) == both


def test_gptq_checkpoint_loads_with_transformers_and_the_int8_kernel(tiny_gptq: Path) -> None:
    loaded = load_local_model(str(tiny_gptq), device="cpu", engine="transformers")
    assert loaded.quantization == "gptq int8"
    assert "TorchInt8Linear" in loaded.kernel, loaded.kernel  # GPTQModel's gptq_torch_int8


def test_unquantized_checkpoint_loads(tiny_float: Path) -> None:
    loaded = load_local_model(str(tiny_float), device="cpu")
    assert (loaded.quantization, loaded.kernel) == ("none", "native bf16")


@pytest.mark.slow
def test_streams_token_by_token_and_is_reproducible(tiny_gptq: Path) -> None:
    llm = local_llm(tiny_gptq)
    pieces = stream(llm, "Hello")
    assert len(pieces) >= 5
    assert all(
        later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:], strict=False)
    )
    assert stream(llm, "Hello") == pieces
    sampled = {stream(llm, "Hello", temperature=1.0, top_k=0, seed=s)[-1] for s in range(4)}
    assert len(sampled) > 1
    assert llm.usage.completion_tokens > 0 and llm.usage.prompt_tokens > 0


def test_prompt_uses_the_chat_template_and_thinking_switch(tiny_gptq: Path) -> None:
    messages = [Message("user", "Hi")]
    plain = local_llm(tiny_gptq, thinking=False).render_prompt(messages)
    thinking = local_llm(tiny_gptq, thinking=True).render_prompt(messages)
    assert plain.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert thinking.endswith("<|im_start|>assistant\n")


def test_generation_errors_surface_at_once(tiny_gptq: Path, monkeypatch) -> None:
    llm = local_llm(tiny_gptq)

    def broken_forward(*args, **kwargs):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(llm.loaded.engine, "forward", broken_forward)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="kernel exploded"):
        stream(llm, "Hello")
    assert time.monotonic() - started < 5


def test_stops_generating_when_the_consumer_stops_reading(tiny_gptq: Path, monkeypatch) -> None:
    llm = local_llm(tiny_gptq)
    calls = []
    forward = llm.loaded.engine.forward
    monkeypatch.setattr(
        llm.loaded.engine, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k)
    )
    messages = [Message("user", "Hello")]
    outputs = llm._chat_stream(messages, False, {**GREEDY, "max_new_tokens": 200})
    next(outputs)
    next(outputs)
    outputs.close()
    made = len(calls)
    assert made < 20
    assert len(calls) == made


def test_prompt_over_the_context_is_a_clear_error(tiny_gptq: Path) -> None:
    llm = local_llm(tiny_gptq)
    with pytest.raises(GenerationError, match="over the model's 32768-token context"):
        stream(llm, "word " * 33_000)


def tiny_run_args(model: Path, home: Path, *extra: str) -> list[str]:
    """`agent run Hello --json` on `model` with no MCP servers."""
    no_mcp = empty_mcp_config(home)
    return ["run", "Hello", "--json", "--model", str(model), "--mcp-config", str(no_mcp), *extra]


@pytest.mark.slow
def test_agent_run_json_on_the_tiny_checkpoint(tiny_gptq: Path, tmp_path: Path) -> None:
    args = tiny_run_args(tiny_gptq, tmp_path, "--seed", "1", "--max-new-tokens", "16")
    done = agent_cli(*args, home=tmp_path)
    events = json_events(done.stdout)
    assert events[0]["type"] == "run_started" and events[0]["backend"] == "local"
    assert events[-1]["type"] == "run_finished"
    assert events[-1]["usage"]["llm_calls"] >= 1
    assert events[-1]["usage"]["completion_tokens"] >= 1
    assert {e["type"] for e in events} <= {
        "run_started",
        "thinking",
        "text",
        "tool_call",
        "tool_result",
        "answer",
        "run_finished",
    }
    assert done.returncode == (0 if events[-1]["status"] == "answered" else 1)
    assert "loaded" in done.stderr  # load time is reported on stderr


@pytest.mark.slow
def test_ctrl_c_stops_generation_and_exits_130(tiny_gptq: Path, tmp_path: Path) -> None:
    args = tiny_run_args(tiny_gptq, tmp_path, "--max-new-tokens", "30000", "--seed", "1")
    with subprocess.Popen(
        agent_argv(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=agent_env(tmp_path),
    ) as proc:
        assert proc.stdout is not None
        texts = 0
        events = []
        for line in proc.stdout:
            events.append(json.loads(line))
            if events[-1]["type"] == "text":
                texts += 1
                if texts == 3:  # once: a second Ctrl-C during shutdown would be a user's choice
                    proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "cancelled"
    assert events[-1]["usage"]["completion_tokens"] < 200


class _CountingTokenizer:
    """The real tokenizer, recording how many ids each decode call gets."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.sizes: list[int] = []

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    def decode(self, ids: list[int], **kwargs: Any) -> str:
        self.sizes.append(len(ids))
        return self.tokenizer.decode(ids, **kwargs)


def test_streamed_text_is_decoded_in_constant_work_per_token(qwen3_tokenizer: Any) -> None:
    from agent.engine.generate import IncrementalDecoder

    text = "Tokyo 東京 🚀 <think>\nhmm\n</think>\n\n" + "The time is 12:00, as ever. " * 200
    ids = qwen3_tokenizer(text, add_special_tokens=False)["input_ids"]
    counting = _CountingTokenizer(qwen3_tokenizer)
    decoder = IncrementalDecoder(counting)
    assert "".join(decoder.push(token) for token in ids) == text
    assert len(ids) > 1000 and max(counting.sizes) <= 8  # a window, never the whole answer
