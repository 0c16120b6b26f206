"""OpenAI's chat-completions request, checked, as one `Generation` per choice.

Every problem with a request is an `ApiError` with the status and the message a client
shows; a field this server does not support is refused, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from agent.config import CONTEXT_TOKENS, NON_THINKING_PRESET, THINKING_PRESET
from agent.server.errors import ApiError
from agent.server.fields import (
    SAMPLING,
    Body,
    check_model,
    choices,
    include_usage,
    sampling,
    seeds,
    stop,
)
from agent.server.generation import Generation

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    body_bytes: int = 4 << 20
    messages: int = 512
    max_tokens: int = CONTEXT_TOKENS


@dataclass(frozen=True)
class ChatRequest:
    """A checked request: one generation per choice, and how to answer."""

    choices: list[Generation]
    stream: bool
    include_usage: bool

    @property
    def n(self) -> int:
        """Choices per prompt: a chat has one prompt."""
        return len(self.choices)


CHAT_FIELDS = SAMPLING | {
    "messages", "tools", "tool_choice", "parallel_tool_calls", "response_format",
    "max_completion_tokens", "logprobs", "top_logprobs", "chat_template_kwargs", "store",
}  # fmt: skip
MAX_TOP_LOGPROBS = 20


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(
        isinstance(part, dict) and part.get("type") == "text" for part in content
    ):
        return "".join(str(part.get("text", "")) for part in content)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts", where)


def chat_messages(body: Body, limits: Limits) -> list[dict[str, Any]]:
    """`messages`, checked, as the chat template takes them."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    if len(messages) > limits.messages:
        raise ApiError(400, f"at most {limits.messages} messages per request", "messages")
    checked = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"{where}.role must be one of {', '.join(ROLES)}", where)
        role = "system" if message["role"] == "developer" else message["role"]
        kept: dict[str, Any] = {"role": role, "content": _text(message.get("content"), where)}
        if role == "assistant" and message.get("tool_calls"):
            kept["tool_calls"] = [_call_in(call, where) for call in message["tool_calls"]]
        checked.append(kept)
    return checked


def _call_in(call: Any, where: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ApiError(400, f"{where}.tool_calls: each needs function.name", where)
    return {"type": "function", "function": {**function}}


def chat_tools(body: Body) -> list[dict[str, Any]] | None:
    """`tools`, checked (None when there are none)."""
    tools = body.get("tools")
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise ApiError(400, "tools must be a list", "tools")
    for number, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if (
            not isinstance(tool, dict)
            or tool.get("type", "function") != "function"
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
        ):
            raise ApiError(400, f"tools[{number}] must be a function with a name", "tools")
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise ApiError(400, f"tools[{number}].function.parameters: a JSON schema", "tools")
    return tools


def _tool_choice(body: Body, tools: list[dict[str, Any]] | None) -> str:
    choice = body.get("tool_choice", "auto" if tools else "none")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        names = [tool["function"]["name"] for tool in tools or []]
        if name not in names:
            raise ApiError(400, f"tool_choice names {name!r}, not one of the tools", "tool_choice")
        return str(name)
    if choice not in TOOL_CHOICES:
        raise ApiError(
            400, "tool_choice must be auto, none, required or a named function", "tool_choice"
        )
    if choice == "required" and not tools:
        raise ApiError(400, "tool_choice required needs tools", "tool_choice")
    return str(choice)


def thinking_enabled(body: Body) -> bool:
    """`chat_template_kwargs.enable_thinking` (on unless false)."""
    kwargs = body.get("chat_template_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ApiError(400, "chat_template_kwargs must be an object", "chat_template_kwargs")
    enabled = kwargs.get("enable_thinking")
    return True if enabled is None else bool(enabled)


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
        raise ApiError(400, message, "response_format")
    return schema


def _logprobs(body: Body) -> int | None:
    """None without `logprobs`; else how many alternatives (`top_logprobs`) each token lists."""
    top = body.integer("top_logprobs", 0, MAX_TOP_LOGPROBS)
    if not body.flag("logprobs", False):
        if top is not None:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return None
    return top or 0


def _store(body: Body) -> None:
    if body.flag("store", False):
        raise ApiError(400, "store: this server keeps no completions", "store")


def parse_request(raw: Any, served: str, limits: Limits) -> ChatRequest:
    """The generations a chat-completions request asks for, and how to answer it."""
    body = Body(raw, CHAT_FIELDS)
    check_model(body, served)
    _store(body)
    tools = chat_tools(body)
    choice = _tool_choice(body, tools)
    json_schema = _response_schema(body.get("response_format"))
    if json_schema is not None and tools and choice != "none":
        message = "response_format with tools: give tool_choice none, or leave one of them out"
        raise ApiError(400, message, "response_format")
    thinking = thinking_enabled(body)
    max_tokens = body.integer("max_completion_tokens", 1, limits.max_tokens)
    if max_tokens is None:
        max_tokens = body.integer("max_tokens", 1, limits.max_tokens)
    generation = Generation(
        messages=chat_messages(body, limits),
        tools=tools,
        tool_choice=choice,
        thinking=thinking,
        sampling=sampling(body, THINKING_PRESET if thinking else NON_THINKING_PRESET),
        max_tokens=max_tokens or limits.max_tokens,
        seed=0,
        stop=stop(body),
        json_schema=json_schema,
        parallel_tool_calls=body.flag("parallel_tool_calls", True),
        logprobs=_logprobs(body),
    )
    return ChatRequest(
        [replace(generation, seed=seed) for seed in seeds(body, choices(body))],
        stream=body.flag("stream", False),
        include_usage=include_usage(body),
    )
