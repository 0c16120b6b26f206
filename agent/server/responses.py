"""The response of one request from its choices' deltas, scores and finishes: whole, or chunk by
chunk (chat completions and text completions, each choice with its `index`)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agent.engine.generate import TokenLogprob
from agent.server.generation import Finish, Scores
from agent.server.logprobs import TokenTexts, chat_logprobs, text_logprobs
from agent.server.stream import CONTENT, REASONING, Delta


@dataclass
class _Choice:
    reasoning: str = ""
    content: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)
    scores: list[TokenLogprob] = field(default_factory=list)
    pending: list[TokenLogprob] = field(default_factory=list)  # not yet sent in a chunk
    finish: Finish | None = None


class _Builder:
    """What chat and text responses share: the choices, `n` per prompt, and usage."""

    prefix = ""
    chunk_object = ""

    def __init__(self, model: str, choices: int, n: int, texts: TokenTexts | None) -> None:
        self.id = f"{self.prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.n = n
        self.texts = texts  # None: no logprobs asked for
        self.choices = [_Choice() for _ in range(choices)]

    def _head(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def first_chunks(self) -> list[dict[str, Any]]:
        """The chunks that open a stream (none)."""
        return []

    def score(self, index: int, scores: Scores) -> None:
        """Take the log-probabilities of tokens just generated."""
        choice = self.choices[index]
        choice.scores += scores.tokens
        choice.pending += scores.tokens

    def _take_pending(self, index: int) -> list[TokenLogprob]:
        choice = self.choices[index]
        pending, choice.pending = choice.pending, []
        return pending

    def usage(self) -> dict[str, Any]:
        """Token counts: each prompt once (not once per choice), every choice's completion."""
        finishes = [c.finish for c in self.choices if c.finish is not None]
        prompts = [c.finish for n, c in enumerate(self.choices) if c.finish and n % self.n == 0]
        prompt = sum(f.prompt_tokens for f in prompts)
        completion = sum(f.completion_tokens for f in finishes)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(f.cached_tokens for f in prompts)},
        }

    def usage_chunk(self) -> dict[str, Any]:
        """`stream_options.include_usage`: the last chunk, with no choices."""
        return {**self._head(self.chunk_object), "choices": [], "usage": self.usage()}


class ChatBuilder(_Builder):
    """A chat completion (`chat.completion`, or `chat.completion.chunk`s)."""

    prefix = "chatcmpl"
    chunk_object = "chat.completion.chunk"

    def _chunk(self, index: int, delta: dict[str, Any], finish: str | None = None,
               scores: list[TokenLogprob] | None = None) -> dict[str, Any]:  # fmt: skip
        choice: dict[str, Any] = {"index": index, "delta": delta, "finish_reason": finish}
        if self.texts is not None:
            choice["logprobs"] = {"content": chat_logprobs(scores or [], self.texts)}
        return {**self._head(self.chunk_object), "choices": [choice]}

    def first_chunks(self) -> list[dict[str, Any]]:
        """The chunks that open each choice's stream."""
        return [
            self._chunk(n, {"role": "assistant", "content": ""}) for n in range(len(self.choices))
        ]

    def add(self, index: int, delta: Delta) -> dict[str, Any]:
        """Take one delta of choice `index`; the stream chunk that carries it."""
        choice = self.choices[index]
        scores = self._take_pending(index)
        if delta.kind == REASONING:
            choice.reasoning += delta.text
            body = {"reasoning_content": delta.text, "reasoning": delta.text}
            return self._chunk(index, body, scores=scores)
        if delta.kind == CONTENT:
            choice.content += delta.text
            return self._chunk(index, {"content": delta.text}, scores=scores)
        function = {"name": delta.name, "arguments": delta.text}
        if delta.call_id is not None:
            choice.calls.append({"id": delta.call_id, "type": "function", "function": function})
            call = {"index": delta.index, "id": delta.call_id, "type": "function",
                    "function": dict(function)}  # fmt: skip
        else:
            choice.calls[delta.index]["function"]["arguments"] += delta.text
            call = {"index": delta.index, "function": {"arguments": delta.text}}
        return self._chunk(index, {"tool_calls": [call]}, scores=scores)

    def last_chunk(self, index: int, finish: Finish) -> dict[str, Any]:
        """The chunk that ends choice `index`."""
        self.choices[index].finish = finish
        return self._chunk(index, {}, finish.reason, self._take_pending(index))

    def whole(self) -> dict[str, Any]:
        """The non-streamed response."""
        return {**self._head("chat.completion"),
                "choices": [self._whole_choice(n) for n in range(len(self.choices))],
                "usage": self.usage()}  # fmt: skip

    def _whole_choice(self, index: int) -> dict[str, Any]:
        choice = self.choices[index]
        message: dict[str, Any] = {
            "role": "assistant",
            "content": choice.content or None,
            "reasoning_content": choice.reasoning or None,
            "reasoning": choice.reasoning or None,
        }
        if choice.calls:
            message["tool_calls"] = choice.calls
        assert choice.finish is not None
        out = {"index": index, "message": message, "finish_reason": choice.finish.reason}
        if self.texts is not None:
            out["logprobs"] = {"content": chat_logprobs(choice.scores, self.texts)}
        return out


class TextBuilder(_Builder):
    """A text completion (`text_completion`, whole or chunk by chunk)."""

    prefix = "cmpl"
    chunk_object = "text_completion"

    def __init__(self, model: str, choices: int, n: int, texts: TokenTexts | None) -> None:
        super().__init__(model, choices, n, texts)
        self._offsets = [0] * choices  # where the next scored token's text starts

    def _logprobs(self, index: int, scores: list[TokenLogprob]) -> dict[str, Any] | None:
        if self.texts is None:
            return None
        logprobs = text_logprobs(scores, self.texts, self._offsets[index])
        self._offsets[index] += sum(len(token) for token in logprobs["tokens"])
        return logprobs

    def _chunk(self, index: int, text: str, finish: str | None = None) -> dict[str, Any]:
        logprobs = self._logprobs(index, self._take_pending(index))
        choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return {**self._head(self.chunk_object), "choices": [choice]}

    def add(self, index: int, delta: Delta) -> dict[str, Any]:
        """Take one piece of text of choice `index`; the stream chunk that carries it."""
        self.choices[index].content += delta.text
        return self._chunk(index, delta.text)

    def last_chunk(self, index: int, finish: Finish) -> dict[str, Any]:
        """The chunk that ends choice `index`."""
        self.choices[index].finish = finish
        return self._chunk(index, "", finish.reason)

    def whole(self) -> dict[str, Any]:
        """The non-streamed response."""
        choices = []
        for index, choice in enumerate(self.choices):
            assert choice.finish is not None
            choices.append({"index": index, "text": choice.content,
                            "logprobs": self._logprobs(index, choice.scores),
                            "finish_reason": choice.finish.reason})  # fmt: skip
        return {**self._head("text_completion"), "choices": choices, "usage": self.usage()}
