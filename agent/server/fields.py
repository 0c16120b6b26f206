"""Reading a request's JSON body: every field checked, `null` read as the field's default, and
a field the endpoint does not know refused (400) instead of silently ignored. The sampling
fields chat and text completions share are read here."""

from __future__ import annotations

import uuid
from typing import Any

from agent.config import SamplingParams
from agent.server.errors import ApiError

MAX_CHOICES = 8  # `n`: one batch of the decode batcher
MAX_STOPS = 4
# Accepted and ignored, each for a reason the README gives.
IGNORED = frozenset({"user", "safety_identifier", "metadata", "service_tier", "prompt_cache_key"})
SAMPLING = frozenset({
    "model", "temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
    "logit_bias", "seed", "n", "stop", "max_tokens", "stream", "stream_options",
})  # fmt: skip


class Body:
    """A request's JSON object, its fields checked against `known`; `null` reads as absent."""

    def __init__(self, raw: Any, known: frozenset[str]) -> None:
        if not isinstance(raw, dict):
            raise ApiError(400, "the body must be a JSON object")
        for key in raw:
            if key not in known | IGNORED:
                raise ApiError(400, f"unsupported field {key!r}", key, "unsupported_field")
        self.fields = {key: value for key, value in raw.items() if value is not None}

    def get(self, key: str, default: Any = None) -> Any:
        """The field's value, or `default` when it is absent or null."""
        return self.fields.get(key, default)

    def number(self, key: str, low: float, high: float) -> float | None:
        """A number in [low, high], or None."""
        value = self.fields.get(key)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ApiError(400, f"{key} must be a number from {low:g} to {high:g}", key)
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        """An integer in [low, high], or None."""
        value = self.fields.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ApiError(400, f"{key} must be an integer from {low} to {high}", key)
        return value

    def flag(self, key: str, default: bool) -> bool:
        """true or false, or `default`."""
        value = self.fields.get(key, default)
        if not isinstance(value, bool):
            raise ApiError(400, f"{key} must be true or false", key)
        return value


def check_model(body: Body, served: str) -> None:
    """404 when the request names a model this server does not serve."""
    model = body.get("model")
    if model not in (None, served):
        message = f"the model {model!r} does not exist; this server serves {served!r}"
        raise ApiError(404, message, "model", "model_not_found")


def sampling(body: Body, preset: SamplingParams) -> SamplingParams:
    """The sampling fields; unset ones take `preset`'s values."""
    temperature = body.number("temperature", 0, 2)
    top_p = body.number("top_p", 0, 1)  # 0: the most likely token only
    top_k = body.integer("top_k", -1, 1 << 20)
    min_p = body.number("min_p", 0, 1)
    return SamplingParams(
        temperature=preset.temperature if temperature is None else temperature,
        top_p=preset.top_p if top_p is None else top_p,
        top_k=preset.top_k if top_k is None else max(top_k, 0),
        min_p=preset.min_p if min_p is None else min_p,
        presence_penalty=body.number("presence_penalty", -2, 2) or 0.0,
        frequency_penalty=body.number("frequency_penalty", -2, 2) or 0.0,
        logit_bias=logit_bias(body),
    )


def logit_bias(body: Body) -> tuple[tuple[int, float], ...]:
    """`{"token id": bias}`, biases from -100 to 100 (the model's vocabulary is checked later)."""
    given = body.get("logit_bias", {})
    message = "logit_bias must map token ids to numbers from -100 to 100"
    if not isinstance(given, dict):
        raise ApiError(400, message, "logit_bias")
    bias = []
    for key, value in given.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(value, bool):
            raise ApiError(400, message, "logit_bias")
        if not isinstance(value, int | float) or not -100 <= value <= 100:
            raise ApiError(400, message, "logit_bias")
        bias.append((int(key), float(value)))
    return tuple(bias)


def seeds(body: Body, count: int) -> list[int]:
    """One seed per choice: `seed`, `seed + 1`, ... (a random start without `seed`)."""
    seed = body.integer("seed", -(1 << 63), (1 << 63) - 1)
    start = seed if seed is not None else uuid.uuid4().int % (1 << 31)
    return [start + number for number in range(count)]


def choices(body: Body) -> int:
    """`n`: how many choices to generate."""
    return body.integer("n", 1, MAX_CHOICES) or 1


def stop(body: Body) -> tuple[str, ...]:
    """`stop`: a string or a list of up to four."""
    given = body.get("stop", [])
    stops = [given] if isinstance(given, str) else given
    ok = isinstance(stops, list) and len(stops) <= MAX_STOPS
    if not ok or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOPS} strings", "stop")
    return tuple(stops)


def include_usage(body: Body) -> bool:
    """`stream_options.include_usage`."""
    options = body.get("stream_options", {})
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    return bool(options.get("include_usage"))
