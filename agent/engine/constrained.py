"""Grammar-constrained tool calls for the local backend, with llguidance.

The grammar is lazy, as llama.cpp's is: text is free until the model emits `<tool_call>` (one
token in Qwen3); from there until `</tool_call>` each token must keep the output on
`\\n{"name": <an offered tool>, "arguments": <JSON valid against that tool's schema>}\\n`. With
tool choice `required` the output is constrained from its first token (after any thinking) to
one or more calls; with `none` the `<tool_call>` token is banned. Tokens the grammar forces are
fed to the model in one forward pass instead of being sampled one by one.

We chose llguidance over xgrammar: a 3 MB wheel with no dependencies (xgrammar 0.2.9 requires
torch, transformers, apache-tvm-ffi and, on Linux x86-64, triton), Lark grammars with embedded
JSON schemas, and token references for Qwen's `<tool_call>`/`</tool_call>`; computing a mask
takes ~30 us on our CPUs.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger("agent")

# Whether a model call may, must or must not call a tool (`ToolCallConstraint`'s `choice`).
AUTO, REQUIRED, NONE = "auto", "required", "none"

CALL_OPEN_TOKEN = "<tool_call>"
CALL_CLOSE_TOKEN = "</tool_call>"
THINK_OPEN_TOKEN = "<think>"
THINK_CLOSE_TOKEN = "</think>"
# When a call must end before the token limit, tokens that end what is open are preferred
# wherever the grammar allows them: inside a string, a quote (with any brackets after it);
# outside, brackets, then a comma (which moves on to a missing required argument).
STRING_END_CHARS = '"}] '
BRACKET_END_CHARS = "}] "
MOVING_ON_CHARS = ", "
# JSON written as json.dumps writes it (and as Qwen3 was trained to): no free whitespace, which a
# weak model could otherwise fill forever.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
KEPT_GRAMMARS = 8  # compiled grammars kept for reuse (one per set of tools offered)


@dataclass(frozen=True)
class SpecialIds:
    """The ids of the tags the constraint reacts to."""

    call_open: int
    call_close: int
    think_open: int
    think_close: int


def _with_closed_objects(schema: Any) -> Any:
    """`schema` with `additionalProperties: false` on objects that list properties but say
    nothing about others: the model may not invent parameters."""
    if isinstance(schema, list):
        return [_with_closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    fixed = {key: _with_closed_objects(value) for key, value in schema.items()}
    if isinstance(schema.get("properties"), dict) and "additionalProperties" not in schema:
        fixed["additionalProperties"] = False
    if "properties" in fixed:  # property names are data, not schemas: keep them as they were
        fixed["properties"] = {
            name: _with_closed_objects(value) for name, value in schema["properties"].items()
        }
    return fixed


def _arguments_schema(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        parameters = {"type": "object"}
    return {**_with_closed_objects(parameters), "x-guidance": JSON_STYLE}


def call_grammar(functions: list[dict[str, Any]], ids: SpecialIds, required: bool) -> str:
    """The Lark grammar (llguidance dialect) of a call's body, or with `required` of a whole
    output made of one or more calls."""
    rules = []
    alternatives = []
    for index, function in enumerate(functions):
        name = function.get("name_for_model", function.get("name", ""))
        schema = _arguments_schema(function)
        if _schema_invalid(json.dumps(schema, sort_keys=True)):
            log.warning("tool %s: its schema cannot be enforced; its arguments stay free", name)
            schema = {"type": "object", "x-guidance": JSON_STYLE}
        head = json.dumps(f'{{"name": {json.dumps(name, ensure_ascii=False)}, "arguments": ')
        rules.append(f'call_{index}: {head} args_{index} "}}"')
        rules.append(f"args_{index}: %json {json.dumps(schema, ensure_ascii=False)}")
        alternatives.append(f"call_{index}")
    body = f'"\\n" ({" | ".join(alternatives)}) "\\n" <[{ids.call_close}]>'
    if required:
        block = f"call_block: <[{ids.call_open}]> {body}"
        start = f'start: /\\n{{0,2}}/ call_block ("\\n" call_block)*\n{block}'
    else:
        start = f"start: {body}"
    return "\n".join([start, *rules])


@cache
def _schema_invalid(schema_text: str) -> bool:
    """Whether llguidance cannot compile this JSON schema."""
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
    return bool(llguidance.LLMatcher.validate_grammar(grammar))


@dataclass
class GrammarTools:
    """What constraining needs of one model: llguidance's view of its tokenizer and tag ids."""

    tokenizer_json: Path
    ids: SpecialIds
    vocab_size: int
    stop_ids: frozenset[int]
    _tokenizer: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _matchers: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    _endings: list[torch.Tensor] = field(default_factory=list)
    _no_call: torch.Tensor | None = None

    @property
    def tokenizer(self) -> Any:
        """llguidance's view of the tokenizer, built when a grammar first needs it, so output
        that is free text until `<tool_call>` does not wait for it (~1.1 s for Qwen3's 151k
        tokens; it holds the GIL, so building it in a background thread stalls start-up as
        much)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance

                try:
                    text = self.tokenizer_json.read_text(encoding="utf-8")
                    eos = sorted(self.stop_ids)
                    self._tokenizer = llguidance.LLTokenizer(
                        text, n_vocab=self.vocab_size, eos_token=eos
                    )
                except Exception as exc:  # llguidance raises a bare Exception for a bad file
                    raise ValueError(f"cannot read {self.tokenizer_json}: {exc}") from exc
            return self._tokenizer

    def matcher(self, grammar: str) -> Any:
        """A fresh matcher for `grammar` (the last few grammars are kept compiled), or
        `ValueError` when llguidance cannot compile it or read the tokenizer."""
        import llguidance

        if grammar not in self._matchers:
            matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
            if matcher.is_error():
                raise ValueError(matcher.get_error())
            self._matchers[grammar] = matcher
            while len(self._matchers) > KEPT_GRAMMARS:
                self._matchers.popitem(last=False)
        self._matchers.move_to_end(grammar)
        return self._matchers[grammar].deep_copy()

    def no_call(self) -> torch.Tensor:
        """A mask of every token but `<tool_call>` (tools off)."""
        if self._no_call is None:
            self._no_call = torch.ones(self.vocab_size, dtype=torch.bool)
            self._no_call[self.ids.call_open] = False
        return self._no_call

    def endings(self, in_string: bool) -> list[torch.Tensor]:
        """Masks of the tokens that end a call soonest, best first."""
        if not self._endings:
            stops = torch.zeros(self.vocab_size, dtype=torch.bool)
            stops[list(self.stop_ids)] = True
            brackets = self._tokens_of(BRACKET_END_CHARS)
            brackets[self.ids.call_close] = True
            string_end = self._tokens_of(STRING_END_CHARS, first='"')
            self._endings = [stops, string_end, brackets, self._tokens_of(MOVING_ON_CHARS)]
        stops, string_end, brackets, commas = self._endings
        return [stops, string_end] if in_string else [stops, brackets, commas]

    def _tokens_of(self, chars: str, first: str = "") -> torch.Tensor:
        """A mask of the single tokens spelling `first` and then up to 4 of `chars`."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        for size in range(0 if first else 1, 5):
            for combination in itertools.product(chars, repeat=size):
                ids = self.tokenizer.tokenize_str(first + "".join(combination))
                if len(ids) == 1:
                    mask[ids[0]] = True
        return mask


_GRAMMAR_TOOLS: dict[Path, GrammarTools] = {}


def grammar_tools(
    model_dir: Path, tokenizer: Any, vocab_size: int, stop_ids: frozenset[int]
) -> GrammarTools:
    """The grammar tools for the checkpoint in `model_dir` (one per process); OSError when it
    has no tokenizer.json."""
    if model_dir not in _GRAMMAR_TOOLS:
        tokenizer_json = model_dir / "tokenizer.json"
        if not tokenizer_json.is_file():
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        ids = SpecialIds(
            *(
                int(tokenizer.convert_tokens_to_ids(tag))
                for tag in (CALL_OPEN_TOKEN, CALL_CLOSE_TOKEN, THINK_OPEN_TOKEN, THINK_CLOSE_TOKEN)
            )
        )
        _GRAMMAR_TOOLS[model_dir] = GrammarTools(tokenizer_json, ids, vocab_size, stop_ids)
    return _GRAMMAR_TOOLS[model_dir]


def _allowed(matcher: Any, vocab_size: int) -> torch.Tensor:
    """The matcher's next-token bitmask (one bit per token, little-endian) as booleans."""
    bits = np.unpackbits(
        np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8), bitorder="little"
    )
    return torch.from_numpy(bits[:vocab_size].astype(bool))


class _StringState:
    """Whether the JSON written so far ends inside a string."""

    def __init__(self) -> None:
        self.in_string = False
        self._escaped = False

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self._escaped:
                self._escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:  # double quote
                self.in_string = not self.in_string


class OutputConstraint(Protocol):
    """What generation asks of a grammar over its output (tool calls, or a JSON answer)."""

    @property
    def active(self) -> bool: ...

    def allowed(self, finishing: bool = False, wrap_up: bool = False) -> torch.Tensor | None: ...

    def forced(self) -> list[int]: ...

    def advance(self, token: int) -> None: ...

    def draftable(self, tokens: list[int]) -> int: ...


def _before_tags(tokens: list[int], tags: set[int]) -> int:
    """How many of `tokens` come before the first of `tags` (all of them where none is)."""
    return next((i for i, token in enumerate(tokens) if token in tags), len(tokens))


class ToolCallConstraint:
    """Follows one model call token by token and says which tokens may come next; with
    `parallel` off, the turn ends after its first call."""

    def __init__(
        self,
        tools: GrammarTools,
        functions: list[dict[str, Any]],
        choice: str = AUTO,
        thinking: bool = False,
        parallel: bool = True,
    ) -> None:
        self.tools = tools
        self.choice = choice
        self.parallel = parallel
        self.in_think = thinking
        self._body = call_grammar(functions, tools.ids, required=False) if functions else ""
        self._required = call_grammar(functions, tools.ids, required=True) if functions else ""
        self.matcher: Any = None
        self._json = _StringState()
        self.calls_done = 0
        if choice == REQUIRED and functions and not thinking:
            self._start(self._required)

    def _start(self, grammar: str) -> None:
        try:
            self.matcher = self.tools.matcher(grammar)
        except ValueError as exc:
            log.warning("tool-call grammar: %s; this call is unconstrained", exc)
            self.matcher = None
        self._json = _StringState()

    @property
    def active(self) -> bool:
        """Whether a grammar is constraining the output now."""
        return self.matcher is not None

    def allowed(self, finishing: bool = False, wrap_up: bool = False) -> torch.Tensor | None:
        """A boolean mask over the vocabulary, or None when any token may come.

        With `finishing`, the call must end soon: closing tokens are preferred where allowed.
        With `wrap_up`, too few tokens are left for another whole call: after a call has been
        made, none is started (the turn ends instead), so no call is ever cut off half-way.
        Without `parallel`, only the end of the turn may follow a call.
        """
        stop_here = wrap_up and self.calls_done > 0 and not self.in_think
        if self.calls_done and not self.parallel:
            return self.tools.endings(False)[0]
        if self.matcher is None:
            banned = stop_here or (self.choice == NONE and not self.in_think)
            return self.tools.no_call() if banned else None
        mask = _allowed(self.matcher, self.tools.vocab_size)
        if stop_here and (stops := mask & self.tools.endings(False)[0]).any():
            return stops
        if finishing:
            for ending in self.tools.endings(self._json.in_string):
                if (preferred := mask & ending).any():
                    return preferred
        return mask

    def forced(self) -> list[int]:
        """Tokens the grammar allows as the only continuation (fed without sampling)."""
        if self.matcher is None:
            return []
        return list(self.matcher.compute_ff_tokens())

    def draftable(self, tokens: list[int]) -> int:
        """How many of drafted `tokens`, from the first, the grammar would take next: in free
        text those before a tag (which changes what is allowed after it), in a call those its
        grammar accepts; none where only the end of the turn may come."""
        if self.calls_done and not self.parallel:
            return 0
        if self.matcher is None:
            ids = self.tools.ids
            return _before_tags(tokens, {ids.call_open, ids.think_open, ids.think_close})
        return int(self.matcher.validate_tokens(tokens))

    def advance(self, token: int) -> None:
        """Take `token` as the output's next token."""
        ids = self.tools.ids
        if self.matcher is not None:
            if not self.matcher.consume_token(token):
                log.warning(
                    "tool-call grammar: %s; the rest is unconstrained", self.matcher.get_error()
                )
                self.matcher = None
            elif token == ids.call_close:
                self.calls_done += 1
                if self.choice != REQUIRED:
                    self.matcher = None
            else:
                self._json.feed(self.tools.tokenizer.decode_bytes([token]))
            return
        if token == ids.think_open:
            self.in_think = True
        elif token == ids.think_close and self.in_think:
            self.in_think = False
            if self.choice == REQUIRED and self._required:
                self._start(self._required)
        elif token == ids.call_open and not self.in_think and self._body and self.choice != NONE:
            self._start(self._body)


class JsonOutputConstraint:
    """`response_format` json_object / json_schema: the answer (after any thinking) is one JSON
    value matching `schema`, written compactly (no free whitespace for a small model to loop
    in), then the turn ends. A schema llguidance cannot compile is a ValueError at once."""

    def __init__(self, tools: GrammarTools, schema: dict[str, Any], thinking: bool) -> None:
        self.tools = tools
        self.in_think = thinking
        body = json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)
        self._grammar = f"start: /[ \\n]*/ answer\nanswer: %json {body}"
        matcher = tools.matcher(self._grammar)
        self.matcher: Any = None if thinking else matcher

    @property
    def active(self) -> bool:
        """Whether the grammar is constraining the output now."""
        return self.matcher is not None

    def allowed(self, finishing: bool = False, wrap_up: bool = False) -> torch.Tensor | None:
        """The tokens the JSON may continue with (any token while thinking)."""
        return None if self.matcher is None else _allowed(self.matcher, self.tools.vocab_size)

    def forced(self) -> list[int]:
        """Tokens the grammar allows as the only continuation."""
        return [] if self.matcher is None else list(self.matcher.compute_ff_tokens())

    def draftable(self, tokens: list[int]) -> int:
        """How many of drafted `tokens`, from the first, the grammar would take next (while
        thinking, those before the think block's end)."""
        if self.matcher is None:
            return _before_tags(tokens, {self.tools.ids.think_close})
        return int(self.matcher.validate_tokens(tokens))

    def advance(self, token: int) -> None:
        """Take `token` as the output's next token."""
        if self.matcher is not None:
            if not self.matcher.consume_token(token):
                log.warning("response_format grammar: %s", self.matcher.get_error())
                self.matcher = None
        elif token == self.tools.ids.think_close and self.in_think:
            self.in_think = False
            self.matcher = self.tools.matcher(self._grammar)
