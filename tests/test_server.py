"""A real `agent serve` on 127.0.0.1 with the trained tiny model, driven by real clients: the
official `openai` package, Qwen-Agent's own `oai` backend as the model card configures it, and
`agent run --model-server`."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from agent.server.app import create_app
from agent.server.generation import ModelService
from tests.clirun import agent_argv, agent_cli, agent_env, json_events

pytestmark = pytest.mark.slow

T = TypeVar("T")
API_KEY = "test-key-123"
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "time-get_current_time",
        "description": "Get current time in a specific timezones",
        "parameters": {
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA timezone name (e.g., 'America/New_York', "
                    "'Europe/London'). Use 'UTC' as local timezone if no timezone provided by "
                    "the user.",
                }
            },
            "required": ["timezone"],
        },
    },
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serving(model: Path, home: Path, *options: str) -> Iterator[str]:
    """`agent serve --model MODEL OPTIONS` on a free port of 127.0.0.1, its root URL once
    /health says 200; stopped after."""
    port = free_port()
    log = (home / "serve.log").open("w")
    process = subprocess.Popen(
        agent_argv("serve", "--model", str(model), "--port", str(port), *options),
        env=agent_env(home), stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    root = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, home / "serve.log"
            try:
                with urllib.request.urlopen(f"{root}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        yield root
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(tiny_trained_gptq: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`agent serve` with an API key: its base URL (`/v1`)."""
    home = tmp_path_factory.mktemp("serve-home")
    with serving(tiny_trained_gptq, home, "--api-key", API_KEY, "--queue-limit", "8") as root:
        yield f"{root}/v1"


def client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base, api_key=API_KEY, max_retries=0)


def model_id(base: str) -> str:
    return client(base).models.list().data[0].id


def ask(base: str, stream: bool, **request: Any) -> dict[str, Any]:
    """One completion, as a dict of content, reasoning, tool calls and finish reason."""
    request = {"model": model_id(base), "seed": 7, **request}
    if not stream:
        reply = client(base).chat.completions.create(**request)
        message = reply.choices[0].message
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in message.tool_calls or []
        ]
        reasoning = getattr(message, "reasoning_content", None) or ""
        return {"content": message.content or "", "reasoning": reasoning, "calls": calls,
                "finish": reply.choices[0].finish_reason, "usage": reply.usage}  # fmt: skip
    out: dict[str, Any] = {"content": "", "reasoning": "", "calls": [], "finish": None}
    chunks = client(base).chat.completions.create(
        stream=True, stream_options={"include_usage": True}, **request
    )
    for chunk in chunks:
        if not chunk.choices:
            out["usage"] = chunk.usage
            continue
        delta = chunk.choices[0].delta
        out["content"] += delta.content or ""
        out["reasoning"] += getattr(delta, "reasoning_content", None) or ""
        for call in delta.tool_calls or []:
            if call.id:
                assert call.index == len(out["calls"]) and call.function and call.function.name
                out["calls"].append({"id": call.id, "name": call.function.name, "arguments": ""})
            out["calls"][call.index]["arguments"] += call.function.arguments or ""
        out["finish"] = chunk.choices[0].finish_reason or out["finish"]
    return out


def test_models_and_health(server: str) -> None:
    assert model_id(server).endswith("/trained-gptq-int8")  # the name is --model as given
    with urllib.request.urlopen(server.replace("/v1", "/health")) as reply:
        assert json.loads(reply.read()) == {"status": "ok"}


def test_a_plain_answer_streamed_equals_the_whole_one(server: str) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    whole = ask(
        server,
        False,
        messages=messages,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    streamed = ask(
        server,
        True,
        messages=messages,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}},
    )
    assert whole["content"] and whole["finish"] == "stop" and whole["calls"] == []
    assert {k: streamed[k] for k in ("content", "reasoning", "finish")} == {
        k: whole[k] for k in ("content", "reasoning", "finish")
    }
    assert "<think>" not in whole["content"] and whole["reasoning"] == ""
    assert whole["usage"].prompt_tokens > 0 and whole["usage"].completion_tokens > 0


def test_tool_calls_come_back_in_openai_shape_streamed_or_not(server: str) -> None:
    messages = [{"role": "user", "content": "What time is it in Tokyo?"}]
    no_think = {"chat_template_kwargs": {"enable_thinking": False}}
    whole = ask(server, False, messages=messages, tools=[TIME_TOOL], extra_body=no_think)
    streamed = ask(server, True, messages=messages, tools=[TIME_TOOL], extra_body=no_think)
    assert whole["finish"] == streamed["finish"] == "tool_calls"
    assert [(c["name"], json.loads(c["arguments"])) for c in whole["calls"]] == [
        ("time-get_current_time", {"timezone": "Asia/Tokyo"})
    ]
    assert [c["arguments"] for c in streamed["calls"]] == [c["arguments"] for c in whole["calls"]]
    assert "<tool_call" not in whole["content"] + streamed["content"]
    # The second request shares the first one's prompt: its prefix comes from the cache.
    assert streamed["usage"].prompt_tokens_details.cached_tokens > 0


def test_thinking_goes_to_reasoning_content(server: str) -> None:
    messages = [{"role": "user", "content": "What time is it in London?"}]
    whole = ask(server, False, messages=messages, tools=[TIME_TOOL])
    streamed = ask(server, True, messages=messages, tools=[TIME_TOOL])
    assert whole["reasoning"] and "<think>" not in whole["reasoning"] + whole["content"]
    assert streamed["reasoning"] == whole["reasoning"]
    assert [c["arguments"] for c in streamed["calls"]] == [c["arguments"] for c in whole["calls"]]
    assert whole["calls"] and whole["calls"][0]["name"] == "time-get_current_time"


def test_tool_choice_none_and_named_are_enforced(server: str) -> None:
    messages = [{"role": "user", "content": "What time is it in Tokyo?"}]
    no_think = {"chat_template_kwargs": {"enable_thinking": False}}
    none = ask(
        server, False, messages=messages, tools=[TIME_TOOL], tool_choice="none", extra_body=no_think
    )
    assert none["calls"] == [] and none["finish"] == "stop"
    named = ask(server, False, messages=[{"role": "user", "content": "Hello"}], tools=[TIME_TOOL],
                tool_choice={"type": "function", "function": {"name": "time-get_current_time"}},
                extra_body=no_think)  # fmt: skip
    assert [c["name"] for c in named["calls"]] == ["time-get_current_time"]
    assert "timezone" in json.loads(named["calls"][0]["arguments"])


def _post(base: str, body: bytes, key: str | None = API_KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(f"{base}/chat/completions", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_requests_get_the_right_status_and_a_json_error(server: str) -> None:
    hello = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    cases = [
        (b"{not json", API_KEY, 400, "not valid JSON"),
        (json.dumps({**hello, "temperature": "hot"}).encode(), API_KEY, 400, "temperature"),
        (json.dumps({**hello, "messages": []}).encode(), API_KEY, 400, "messages"),
        (json.dumps({**hello, "max_tokens": 10**7}).encode(), API_KEY, 400, "max_tokens"),
        (json.dumps({**hello, "n": 9}).encode(), API_KEY, 400, "n must be an integer from 1 to 8"),
        (json.dumps({**hello, "pad": "x" * (5 << 20)}).encode(), API_KEY, 413, "bytes"),
        (json.dumps(hello).encode(), "wrong-key", 401, "API key"),
        (json.dumps(hello).encode(), None, 401, "API key"),
    ]
    for body, key, status, words in cases:
        got, error = _post(server, body, key)
        assert got == status and words in error["error"]["message"], (got, error)
    got, reply = _post(server, json.dumps(hello).encode())
    assert got == 200 and reply["choices"][0]["finish_reason"] == "length"


def _metric(base: str, name: str) -> float:
    with urllib.request.urlopen(base.replace("/v1", "/metrics")) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_a_client_that_leaves_stops_its_generation(server: str) -> None:
    before = _metric(server, "agent_completion_tokens_total")
    stream = client(server).chat.completions.create(
        model=model_id(server), stream=True, max_tokens=2000, temperature=1.5, top_p=1.0,
        messages=[{"role": "user", "content": "Write a very long story about the sea."}],
        extra_body={"chat_template_kwargs": {"enable_thinking": True}, "min_p": 0, "top_k": 0},
    )  # fmt: skip
    for _ in range(3):
        next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 30
    while _metric(server, "agent_requests_running") > 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert _metric(server, "agent_completion_tokens_total") - before < 2000


def at_once(count: int, call: Callable[[], T]) -> list[T]:
    """`call()` from `count` threads at once: their results (an exception in one fails)."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(call) for _ in range(count)]
        return [future.result(timeout=300) for future in futures]


def test_eight_concurrent_clients_all_get_complete_answers(server: str) -> None:
    no_think = {"chat_template_kwargs": {"enable_thinking": False}}

    def one() -> dict[str, Any]:
        question = [{"role": "user", "content": "What time is it in Tokyo?"}]
        return ask(server, True, messages=question, tools=[TIME_TOOL], extra_body=no_think)

    results = at_once(8, one)
    assert len(results) == 8
    for result in results:
        assert result["finish"] == "tool_calls"
        assert json.loads(result["calls"][0]["arguments"]) == {"timezone": "Asia/Tokyo"}


def test_metrics_name_what_a_peer_server_lacks(server: str) -> None:
    # Every call so far was made under the grammar: none had arguments its schema refuses.
    assert _metric(server, "agent_tool_arguments_refused_total") == 0
    assert _metric(server, "agent_requests_total") > 0
    for name in ("agent_requests_waiting", "agent_prefix_cache_hit_tokens_total",
                 "agent_tool_calls_repaired_total", "agent_tag_text_held_total",
                 "agent_tool_calls_unparsed_total",
                 "agent_time_to_first_token_seconds_count"):  # fmt: skip
        assert _metric(server, name) >= 0


def test_qwen_agent_oai_backend_as_the_model_card_configures_it(
    server: str, tmp_path: Path
) -> None:
    from qwen_agent.agents import Assistant

    from agent.config import load_settings
    from agent.tools.toolset import open_toolset

    settings = load_settings({"tools": ("time",)})
    with open_toolset(settings, work_dir=tmp_path, log_dir=tmp_path) as toolset:
        llm = {"model": model_id(server), "model_server": server, "api_key": API_KEY,
               "generate_cfg": {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
                                "seed": 7}}  # fmt: skip
        bot = Assistant(llm=llm, function_list=toolset.tools)
        *_, messages = bot.run([{"role": "user", "content": "What time is it in Tokyo?"}])
    calls = [m for m in messages if m.get("function_call")]
    results = [m for m in messages if m.get("role") == "function"]
    assert calls and calls[0]["function_call"]["name"] == "time-get_current_time"
    assert results and "+09:00" in results[0]["content"]
    assert messages[-1]["role"] == "assistant" and "Tokyo" in messages[-1]["content"]


def test_agent_run_uses_the_server_and_a_real_mcp_tool(server: str, tmp_path: Path) -> None:
    done = agent_cli("run", "--json", "--model-server", server, "--api-key", API_KEY,
                     "--model", model_id(server), "--seed", "3", "--tools", "time",
                     "What time is it in Tokyo?", home=tmp_path)  # fmt: skip
    events = json_events(done.stdout)
    assert done.returncode == 0, done.stderr
    results = [e for e in events if e["type"] == "tool_result"]
    assert results and results[0]["name"] == "time-get_current_time" and results[0]["ok"]


def test_health_says_503_while_the_model_loads() -> None:
    from starlette.testclient import TestClient

    service = ModelService("not-loaded-yet")
    with TestClient(create_app(service), base_url="http://127.0.0.1:8000") as test_client:
        assert test_client.get("/health").status_code == 503
        reply = test_client.post("/v1/chat/completions", json={"messages": []})
        assert reply.status_code == 503 and reply.headers["Retry-After"]
        assert "loading" in reply.json()["error"]["message"]


def test_response_format_makes_the_answer_json_of_the_schema(server: str) -> None:
    properties = {"city": {"enum": ["Tokyo", "Paris", "Lima"]},
                  "hour": {"type": "integer", "minimum": 0, "maximum": 23}}  # fmt: skip
    schema = {"type": "object", "properties": properties, "required": ["city", "hour"],
              "additionalProperties": False}  # fmt: skip
    strict = {"type": "json_schema", "json_schema": {"name": "when", "schema": schema}}
    messages = [{"role": "user", "content": "What time is it in Tokyo?"}]
    for extra in (NO_THINK, {}):  # thinking off, then on: the JSON comes after the thinking
        reply = ask(server, False, messages=messages, extra_body=extra, max_tokens=600,
                    response_format=strict)  # fmt: skip
        answer = json.loads(reply["content"])
        assert set(answer) == {"city", "hour"} and 0 <= answer["hour"] <= 23, reply
        assert answer["city"] in ("Tokyo", "Paris", "Lima") and reply["finish"] == "stop"
    free = ask(server, False, messages=messages, extra_body=NO_THINK, max_tokens=64,
               response_format={"type": "json_object"})  # fmt: skip
    assert free["content"].startswith("{")
    if free["finish"] == "stop":
        assert isinstance(json.loads(free["content"]), dict)
    both = {"messages": messages, "tools": [TIME_TOOL], "response_format": {"type": "json_object"}}
    got, error = _post(server, json.dumps(both).encode())
    assert got == 400 and "tool_choice none" in error["error"]["message"]


def test_with_a_key_the_bearer_scheme_is_case_insensitive_and_any_host_is_served(
    server: str,
) -> None:
    for scheme, host in (("bearer", None), ("BEARER", "models.example.com")):
        headers = {"Authorization": f"{scheme} {API_KEY}", **({"Host": host} if host else {})}
        request = urllib.request.Request(f"{server}/models", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as reply:
            assert json.loads(reply.read())["data"][0]["created"] > 0
