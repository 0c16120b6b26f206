"""`agent serve` with no API key (the default), on 127.0.0.1, driven by real HTTP clients: what
is decided before the status line, the error shapes, the access checks, and the API surface
(logprobs, logit_bias, n, parallel_tool_calls, text completions, tokenize)."""

from __future__ import annotations

import functools
import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.test_server import TIME_TOOL, at_once, serving

ORIGIN = "http://app.example:3000"
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
HELLO = [{"role": "user", "content": "Hello"}]
STOP_IDS = ("151643", "151645")  # <|endoftext|>, <|im_end|>
CALL_OPEN_ID = "151657"  # <tool_call>


@pytest.fixture(scope="module")
def base(tiny_trained_gptq: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`agent serve` without a key, queue limit 2, one allowed origin: its root URL."""
    home = tmp_path_factory.mktemp("serve-open")
    options = ("--queue-limit", "2", "--allowed-origins", ORIGIN)
    with serving(tiny_trained_gptq, home, *options) as root:
        yield root


def sdk(root: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0)


@functools.cache
def served(root: str) -> str:
    """The model's name, as the server lists it."""
    return sdk(root).models.list().data[0].id


def post(root: str, path: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{root}{path}", json=body, headers=headers, timeout=120)


def sse_events(reply: httpx.Response) -> list[dict[str, Any]]:
    """The JSON events of a server-sent event stream, up to [DONE]."""
    events = []
    for line in reply.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def assert_error(reply: httpx.Response, status: int, words: str) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"]
    return dict(error)


# --- Decided before the status line ---------------------------------------------------------


@pytest.mark.slow
def test_a_full_queue_is_503_with_retry_after_before_any_stream_starts(base: str) -> None:
    body = {"messages": HELLO, "stream": True, "max_tokens": 150, "temperature": 1.0,
            "logit_bias": {token: -100 for token in STOP_IDS}, **NO_THINK}  # fmt: skip
    start = threading.Barrier(12)

    def one() -> tuple[int, str | None, list[dict[str, Any]], str]:
        start.wait()
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=300) as reply:
            reply.read()
            events = sse_events(reply) if reply.status_code == 200 else []
            return reply.status_code, reply.headers.get("retry-after"), events, reply.text

    results = at_once(12, one)
    assert len(results) == 12
    refused = [r for r in results if r[0] == 503]
    served = [r for r in results if r[0] == 200]
    # 8 generate at once, 2 may wait: the other 2 are refused before anything is sent.
    assert len(refused) == 2 and len(served) == 10, [r[0] for r in results]
    for _, retry, _, text in refused:
        assert retry == "2" and "busy" in json.loads(text)["error"]["message"]
    for _, _, events, _ in served:
        assert not any("error" in event for event in events)
        assert events[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize("stream", [False, True])
def test_a_prompt_over_the_context_is_400_context_length_exceeded(base: str, stream: bool) -> None:
    messages = [{"role": "user", "content": "tok " * 33_000}]
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(base).chat.completions.create(model=served(base), messages=messages, stream=stream)
    assert caught.value.status_code == 400 and caught.value.code == "context_length_exceeded"
    assert "over the model's 32768-token context" in caught.value.message


def test_explicit_null_means_the_default_for_every_optional_field(base: str) -> None:
    nulls = ["model", "n", "stream", "stream_options", "tools", "tool_choice", "temperature",
             "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty", "seed", "stop",
             "logit_bias", "logprobs", "top_logprobs", "response_format",
             "parallel_tool_calls", "max_completion_tokens", "chat_template_kwargs", "user",
             "store", "metadata"]  # fmt: skip
    body = {"messages": HELLO, "max_tokens": 4, **dict.fromkeys(nulls)}
    reply = post(base, "/v1/chat/completions", body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["finish_reason"] in ("length", "stop")
    text = {"prompt": "Once", "max_tokens": 2, **dict.fromkeys(["n", "stream", "echo", "stop"])}
    assert post(base, "/v1/completions", text).status_code == 200


# --- Errors, in OpenAI's shape ---------------------------------------------------------------


def test_every_error_is_an_openai_error_object_with_its_status(base: str) -> None:
    assert_error(httpx.get(f"{base}/nowhere"), 404, "no endpoint /nowhere")
    reply = httpx.get(f"{base}/v1/chat/completions")
    assert_error(reply, 405, "does not take GET")
    assert "POST" in reply.headers["allow"]
    plain = httpx.post(f"{base}/v1/chat/completions", content=b"{}",
                       headers={"Content-Type": "text/plain"})  # fmt: skip
    assert_error(plain, 415, "application/json")
    too_big = post(base, "/v1/chat/completions", {"messages": HELLO, "pad": "x" * (5 << 20)})
    assert_error(too_big, 413, "bytes")
    error = assert_error(post(base, "/v1/chat/completions", {"messages": HELLO, "best_of": 2}),
                         400, "unsupported field 'best_of'")  # fmt: skip
    assert error["param"] == "best_of"
    cases = [
        ({"logit_bias": {"7": 101}}, "logit_bias"),
        ({"logit_bias": {"9999999": 1}}, "token ids must be below"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "needs logprobs"),
        ({"n": 0}, "n must be an integer from 1 to 8"),
        ({"store": True}, "store"),
    ]
    for extra, words in cases:
        assert_error(post(base, "/v1/chat/completions", {"messages": HELLO, **extra}), 400, words)
    with pytest.raises(openai.NotFoundError):
        sdk(base).chat.completions.create(model="gpt-4o", messages=HELLO)  # type: ignore[arg-type]


# --- Access without a key ---------------------------------------------------------------------


def test_without_a_key_foreign_hosts_origins_and_bodies_are_refused(base: str) -> None:
    port = base.rsplit(":", 1)[1]
    hello = {"messages": HELLO, "max_tokens": 1}
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert post(base, "/v1/chat/completions", hello, Host=host).status_code == 200
    for host in (f"evil.example:{port}", "127.0.0.1:1", "localhost"):
        assert_error(post(base, "/v1/chat/completions", hello, Host=host), 400, "Host")
    assert_error(httpx.get(f"{base}/metrics", headers={"Host": "evil.example"}), 400, "Host")
    refused = post(base, "/v1/chat/completions", hello, Origin="http://evil.example")
    assert_error(refused, 403, "Origin")
    assert "access-control-allow-origin" not in refused.headers
    allowed = post(base, "/v1/chat/completions", hello, Origin=ORIGIN)
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ORIGIN
    preflight = httpx.options(f"{base}/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})  # fmt: skip
    assert preflight.status_code == 204
    assert "POST" in preflight.headers["access-control-allow-methods"]
    form = httpx.post(f"{base}/v1/chat/completions", data={"messages": "x"})
    assert_error(form, 415, "application/json")


# --- Responses --------------------------------------------------------------------------------


def test_models_report_a_real_created_time_and_one_model_by_id(base: str) -> None:
    card = sdk(base).models.list().data[0]
    assert abs(card.created - time.time()) < 3600
    assert sdk(base).models.retrieve(card.id).id == card.id
    assert_error(httpx.get(f"{base}/v1/models/other"), 404, "does not exist")


@pytest.mark.slow
def test_tool_only_and_reasoning_only_messages_have_null_content(base: str) -> None:
    question = [{"role": "user", "content": "What time is it in Tokyo?"}]
    calls = sdk(base).chat.completions.create(
        model=served(base),
        messages=question,
        tools=[TIME_TOOL],
        tool_choice="required",
        seed=1,
        extra_body=NO_THINK,
    )  # type: ignore[arg-type]
    assert calls.choices[0].message.tool_calls and calls.choices[0].message.content is None
    thinking = sdk(base).chat.completions.create(
        model=served(base), messages=question, max_tokens=5, seed=1
    )
    message = thinking.choices[0].message
    assert getattr(message, "reasoning_content", None) and message.content is None


def test_top_p_zero_is_the_most_likely_token(base: str) -> None:
    def answer(**sampling: Any) -> str:
        reply = sdk(base).chat.completions.create(
            model=served(base), messages=HELLO, max_tokens=12, extra_body=NO_THINK, **sampling
        )
        return reply.choices[0].message.content or ""

    greedy = answer(temperature=0)
    assert [answer(temperature=2, top_p=0, seed=seed) for seed in (1, 2)] == [greedy, greedy]


@pytest.mark.slow
def test_json_answer_cut_at_the_token_limit_finishes_with_length(base: str) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    for stream in (False, True):
        body = {"messages": HELLO, "max_tokens": 3, "stream": stream, "seed": 3, **NO_THINK,
                "response_format": {"type": "json_schema",
                                    "json_schema": {"name": "c", "schema": schema}}}  # fmt: skip
        reply = post(base, "/v1/chat/completions", body)
        assert reply.status_code == 200
        finish = (sse_events(reply)[-1] if stream else reply.json())["choices"][0]
        assert finish["finish_reason"] == "length"


# --- logprobs, logit_bias, n, parallel_tool_calls --------------------------------------------


def _logprobs(root: str, stream: bool, **request: Any) -> tuple[str, list[Any]]:
    request = {"model": served(root), "messages": HELLO, "max_tokens": 10, "seed": 5,
               "logprobs": True, "extra_body": NO_THINK, **request}  # fmt: skip
    if not stream:
        reply = sdk(root).chat.completions.create(**request)
        logprobs = reply.choices[0].logprobs
        return reply.choices[0].message.content or "", list(logprobs.content or [])  # type: ignore[union-attr]
    content, entries = "", []
    for chunk in sdk(root).chat.completions.create(stream=True, **request):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            entries += (choice.logprobs.content or []) if choice.logprobs else []
    return content, entries


@pytest.mark.slow
def test_logprobs_streamed_and_whole_in_openai_shape(base: str) -> None:
    content, whole = _logprobs(base, False, top_logprobs=3)
    streamed_content, streamed = _logprobs(base, True, top_logprobs=3)
    assert content and streamed_content == content
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in whole]
    assert content in b"".join(bytes(e.bytes) for e in whole).decode()
    for entry in whole:
        tops = [t.logprob for t in entry.top_logprobs]
        assert entry.logprob <= 0 and 1 <= len(tops) <= 3 and tops == sorted(tops, reverse=True)
        assert sum(math.exp(t) for t in tops) <= 1.0001
        assert entry.token == bytes(entry.bytes).decode(errors="replace")
    _, greedy = _logprobs(base, False, top_logprobs=2, temperature=0)
    assert all(e.token == e.top_logprobs[0].token for e in greedy)


@pytest.mark.slow
def test_logprobs_are_of_the_constrained_distribution(base: str) -> None:
    # A named tool: the grammar forces the call's head, so those tokens had no alternative.
    _, entries = _logprobs(base, False, top_logprobs=5, max_tokens=30, tools=[TIME_TOOL],
                           tool_choice={"type": "function",
                                        "function": {"name": "time-get_current_time"}})  # fmt: skip
    forced = [e for e in entries if e.logprob == 0.0 and len(e.top_logprobs) == 1]
    assert forced and all(e.top_logprobs[0].token == e.token for e in forced)


def test_logit_bias_moves_the_choice(base: str) -> None:
    ids = post(base, "/tokenize", {"content": " the"}).json()["tokens"]
    assert len(ids) == 1
    reply = sdk(base).chat.completions.create(model=served(base), messages=HELLO, max_tokens=3,
                                              temperature=0, logit_bias={str(ids[0]): 100},
                                              extra_body=NO_THINK)  # fmt: skip
    assert reply.choices[0].message.content == "the the the"


@pytest.mark.slow
def test_parallel_tool_calls_false_makes_one_call_at_most(base: str) -> None:
    question = [{"role": "user", "content": "What time is it in Tokyo?"}]
    eager = {CALL_OPEN_ID: 100}  # the model would open call after call

    def calls(parallel: bool) -> tuple[int, str]:
        reply = sdk(base).chat.completions.create(
            model=served(base), messages=question, tools=[TIME_TOOL], parallel_tool_calls=parallel,  # type: ignore[list-item]
            logit_bias=eager, max_tokens=200, seed=2, extra_body=NO_THINK)  # fmt: skip
        choice = reply.choices[0]
        return len(choice.message.tool_calls or []), choice.finish_reason

    assert calls(True)[0] > 1
    assert calls(False) == (1, "tool_calls")


@pytest.mark.slow
def test_n_choices_each_with_its_own_seed_and_usage_summed(base: str) -> None:
    request: dict[str, Any] = {"model": served(base), "messages": HELLO, "max_tokens": 8,
                               "temperature": 1.5, "extra_body": NO_THINK}  # fmt: skip
    three = sdk(base).chat.completions.create(n=3, seed=40, **request)
    alone = [sdk(base).chat.completions.create(seed=40 + n, **request) for n in range(3)]
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert [c.message.content for c in three.choices] == [a.choices[0].message.content
                                                         for a in alone]  # fmt: skip
    assert three.usage and three.usage.prompt_tokens == alone[0].usage.prompt_tokens  # type: ignore[union-attr]
    assert three.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)  # type: ignore[union-attr]
    texts = ["", ""]
    finishes = [None, None]
    for chunk in sdk(base).chat.completions.create(n=2, seed=40, stream=True, **request):
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            finishes[choice.index] = choice.finish_reason or finishes[choice.index]
    assert texts == [c.message.content for c in three.choices[:2]] and None not in finishes


# --- Text completions, tokenize ---------------------------------------------------------------


@pytest.mark.slow
def test_text_completions_whole_streamed_and_several_prompts(base: str) -> None:
    client = sdk(base)
    whole = client.completions.create(model=served(base), prompt="The sea is", max_tokens=6, seed=9)
    assert whole.object == "text_completion" and whole.choices[0].text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 6  # type: ignore[union-attr]
    streamed = "".join(
        chunk.choices[0].text
        for chunk in client.completions.create(
            model=served(base), prompt="The sea is", max_tokens=6, seed=9, stream=True
        )  # fmt: skip
        if chunk.choices
    )
    assert streamed == whole.choices[0].text
    several = client.completions.create(model=served(base), prompt=["A", "B"], n=2,
                                        max_tokens=2, seed=1, logprobs=2)  # fmt: skip
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    logprobs = several.choices[0].logprobs
    assert logprobs and len(logprobs.tokens or []) == 2 and len(logprobs.top_logprobs or []) == 2
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model=served(base), prompt="A", echo=True)


def test_tokenize_and_detokenize_as_llama_server_and_vllm_give_them(base: str) -> None:
    llama = post(base, "/tokenize", {"content": "Hello world", "with_pieces": True}).json()
    ids = [token["id"] for token in llama["tokens"]]
    assert "".join(token["piece"] for token in llama["tokens"]) == "Hello world"
    vllm = post(base, "/tokenize", {"prompt": "Hello world", "return_token_strs": True}).json()
    assert vllm["tokens"] == ids and vllm["count"] == len(ids) and vllm["max_model_len"] == 32768
    back = post(base, "/detokenize", {"tokens": ids}).json()
    assert back["content"] == back["prompt"] == "Hello world"
    chat = post(base, "/tokenize", {"messages": HELLO}).json()
    text = post(base, "/detokenize", {"tokens": chat["tokens"]}).json()["content"]
    assert text.startswith("<|im_start|>user\nHello") and text.endswith("<|im_start|>assistant\n")
    assert_error(post(base, "/detokenize", {"tokens": [-1]}), 400, "token ids")
