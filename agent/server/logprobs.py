"""Token log-probabilities in OpenAI's shapes: chat's `logprobs.content` list, and the text
completions' `tokens` / `token_logprobs` / `top_logprobs` / `text_offset` columns."""

from __future__ import annotations

from functools import cache
from typing import Any

from agent.engine.generate import TokenLogprob


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet back to bytes (how byte-level BPE vocabularies spell them)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]  # fmt: skip
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


class TokenTexts:
    """A tokenizer's tokens as bytes and as text (bytes that are not whole UTF-8 show as �)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._bytes: dict[int, bytes] = {}

    def bytes_of(self, token: int) -> bytes:
        """The bytes `token` stands for."""
        if token not in self._bytes:
            entry = self._tokenizer.convert_ids_to_tokens([token])[0] or ""
            decoder = _byte_decoder()
            if all(char in decoder for char in entry):
                self._bytes[token] = bytes(decoder[char] for char in entry)
            else:  # an added token, written as itself
                self._bytes[token] = entry.encode()
        return self._bytes[token]

    def text_of(self, token: int) -> str:
        """The text `token` stands for."""
        return self.bytes_of(token).decode("utf-8", errors="replace")

    def entry(self, token: int, logprob: float) -> dict[str, Any]:
        """`{"token", "logprob", "bytes"}`."""
        return {"token": self.text_of(token), "logprob": logprob,
                "bytes": list(self.bytes_of(token))}  # fmt: skip


def chat_logprobs(scores: list[TokenLogprob], texts: TokenTexts) -> list[dict[str, Any]]:
    """`choices[].logprobs.content` for these tokens."""
    return [
        {**texts.entry(s.token, s.logprob),
         "top_logprobs": [texts.entry(token, logprob) for token, logprob in s.top]}
        for s in scores
    ]  # fmt: skip


def text_logprobs(scores: list[TokenLogprob], texts: TokenTexts, offset: int) -> dict[str, Any]:
    """`choices[].logprobs` of a text completion; `offset` is where the first token's text
    starts in the completion."""
    tokens = [texts.text_of(s.token) for s in scores]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [{texts.text_of(t): lp for t, lp in s.top} for s in scores],
        "text_offset": offsets,
    }
