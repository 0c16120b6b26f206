"""OpenAI's chat-completions request, checked, as a `Generation`; and the response shapes.

Every problem with a request is a `RequestError` with the status and the message a client
shows; unknown fields are ignored, as vLLM does.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from agent.config import CONTEXT_TOKENS, NON_THINKING_PRESET, THINKING_PRESET
from agent.engine.sampling import SamplingParams
from agent.server.generation import Finish, Generation
from agent.server.stream import Delta

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    body_bytes: int = 4 << 20
    messages: int = 512
    max_tokens: int = CONTEXT_TOKENS


class RequestError(Exception):
    """A request the server refuses: `status` and a message in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return error_body(str(self), kind, self.param)


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    """`{"error": {...}}` as OpenAI's API writes it."""
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def _number(body: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(400, f"{key} must be a number from {low:g} to {high:g}", key)
    return float(value)


def _integer(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(400, f"{key} must be an integer from {low} to {high}", key)
    return value


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise RequestError(400, f"{where}.content must be a string or a list of text parts", where)


def _messages(body: dict[str, Any], limits: Limits) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list", "messages")
    if len(messages) > limits.messages:
        raise RequestError(400, f"at most {limits.messages} messages per request", "messages")
    checked = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(400, f"{where}.role must be one of {', '.join(ROLES)}", where)
        role = "system" if message["role"] == "developer" else message["role"]
        kept: dict[str, Any] = {"role": role, "content": _text(message.get("content"), where)}
        if role == "assistant" and message.get("tool_calls"):
            kept["tool_calls"] = [_call_in(call, where) for call in message["tool_calls"]]
        checked.append(kept)
    return checked


def _call_in(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RequestError(400, f"{where}.tool_calls: each needs function.name", where)
    return {"type": "function", "function": {**function}}


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise RequestError(400, "tools must be a list", "tools")
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise RequestError(400, f"tools[{number}] must be a function with a name", "tools")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise RequestError(400, f"tools[{number}].function.parameters: a JSON schema", "tools")
    return tools


def _tool_choice(body: dict[str, Any], tools: list[dict[str, Any]] | None) -> str:
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        names = [tool["function"]["name"] for tool in tools or []]
        if name not in names:
            raise RequestError(
                400, f"tool_choice names {name!r}, not one of the tools", "tool_choice"
            )
        return str(name)
    if choice not in TOOL_CHOICES:
        raise RequestError(
            400, "tool_choice must be auto, none, required or a named function", "tool_choice"
        )
    if choice == "required" and not tools:
        raise RequestError(400, "tool_choice required needs tools", "tool_choice")
    return str(choice)


def _thinking(body: dict[str, Any]) -> bool:
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise RequestError(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
    return bool(kwargs.get("enable_thinking", True))


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise RequestError(400, "stop must be a string or a list of up to 4 strings", "stop")
    return tuple(stops)


def _response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks the answer to follow (None: free text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    schema = (
        (response_format.get("json_schema") or {}).get("schema") if kind == "json_schema" else None
    )
    if not isinstance(schema, dict):
        message = "response_format must be text, json_object, or json_schema with a schema"
        raise RequestError(400, message, "response_format")
    return schema


def parse_request(body: Any, served: str, limits: Limits) -> tuple[Generation, bool, bool]:
    """The generation a request asks for, whether to stream, and whether to add usage."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    if body.get("model") not in (None, served):
        raise RequestError(
            404,
            f"the model {body.get('model')!r} does not exist; this server serves {served!r}",
            "model",
        )
    if body.get("n", 1) != 1:
        raise RequestError(400, "n must be 1: this server returns one choice", "n")
    tools = _tools(body)
    choice = _tool_choice(body, tools)
    json_schema = _response_schema(body.get("response_format"))
    if json_schema is not None and tools and choice != "none":
        message = "response_format with tools: give tool_choice none, or leave one of them out"
        raise RequestError(400, message, "response_format")
    thinking = _thinking(body)
    preset = THINKING_PRESET if thinking else NON_THINKING_PRESET
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    top_k = _integer(body, "top_k", -1, 1 << 20)
    min_p = _number(body, "min_p", 0, 1)
    sampling = SamplingParams(
        temperature=preset.temperature if temperature is None else temperature,
        top_p=top_p or preset.top_p,
        top_k=preset.top_k if top_k is None else max(top_k, 0),
        min_p=preset.min_p if min_p is None else min_p,
        presence_penalty=_number(body, "presence_penalty", -2, 2) or 0.0,
        frequency_penalty=_number(body, "frequency_penalty", -2, 2) or 0.0,
    )
    max_tokens = _integer(body, "max_completion_tokens", 1, limits.max_tokens)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, limits.max_tokens)
    seed = _integer(body, "seed", -(1 << 63), (1 << 63) - 1)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, "stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    generation = Generation(
        messages=_messages(body, limits),
        tools=tools,
        tool_choice=choice,
        thinking=thinking,
        sampling=sampling,
        max_tokens=max_tokens or limits.max_tokens,
        seed=seed if seed is not None else uuid.uuid4().int % (1 << 31),
        stop=_stop(body),
        json_schema=json_schema,
    )
    return generation, stream, bool(isinstance(options, dict) and options.get("include_usage"))


class CompletionBuilder:
    """The response for one request, from its deltas: whole, or chunk by chunk."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.reasoning = ""
        self.content = ""
        self.calls: list[dict[str, Any]] = []

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def first_chunk(self) -> dict[str, Any]:
        """The chunk that opens a stream."""
        return self._chunk({"role": "assistant", "content": ""})

    def add(self, delta: Delta) -> dict[str, Any]:
        """Take one delta; the stream chunk that carries it."""
        if delta.kind == "reasoning":
            self.reasoning += delta.text
            return self._chunk({"reasoning_content": delta.text, "reasoning": delta.text})
        if delta.kind == "content":
            self.content += delta.text
            return self._chunk({"content": delta.text})
        if delta.call_id is not None:
            self.calls.append(
                {"id": delta.call_id, "type": "function",
                 "function": {"name": delta.name, "arguments": delta.text}}
            )  # fmt: skip
            call = {"index": delta.index, "id": delta.call_id, "type": "function",
                    "function": {"name": delta.name, "arguments": delta.text}}  # fmt: skip
        else:
            self.calls[delta.index]["function"]["arguments"] += delta.text
            call = {"index": delta.index, "function": {"arguments": delta.text}}
        return self._chunk({"tool_calls": [call]})

    def last_chunk(self, finish: Finish) -> dict[str, Any]:
        """The chunk that ends the choice."""
        return self._chunk({}, finish.reason)

    def usage(self, finish: Finish) -> dict[str, Any]:
        return {
            "prompt_tokens": finish.prompt_tokens,
            "completion_tokens": finish.completion_tokens,
            "total_tokens": finish.prompt_tokens + finish.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": finish.cached_tokens},
        }

    def usage_chunk(self, finish: Finish) -> dict[str, Any]:
        """`stream_options.include_usage`: the last chunk, with no choices."""
        return {**self._chunk({}), "choices": [], "usage": self.usage(finish)}

    def whole(self, finish: Finish) -> dict[str, Any]:
        """The non-streamed response."""
        message: dict[str, Any] = {
            "role": "assistant",
            "content": self.content if self.content or not self.calls else None,
            "reasoning_content": self.reasoning or None,
            "reasoning": self.reasoning or None,
        }
        if self.calls:
            message["tool_calls"] = self.calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish.reason}],
            "usage": self.usage(finish),
        }
