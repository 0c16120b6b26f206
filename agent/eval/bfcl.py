"""`agent eval bfcl`: BFCL's single-turn categories run on any backend and scored by AST match.

Each entry is one model call with the entry's functions offered, through the same backend,
prompt and tool-call parser as `agent run`. We report, per category: accuracy (BFCL's AST
match, agent/eval/bfcl_checker.py), the share of tool calls that parse as the model wrote them
(strict JSON) and after our repair, the share that fit their function's schema, and latency.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from jsonschema import Draft202012Validator
from qwen_agent.llm.base import BaseChatModel
from qwen_agent.llm.schema import Message

from agent.backends.tool_choice import AUTO, REQUIRED, TOOL_CHOICE_KEY
from agent.eval.bfcl_checker import check_entry
from agent.eval.bfcl_data import BfclEntry, tool_schema
from agent.loop.call_parser import RepairingFnCallPrompt
from agent.loop.call_text import CALL_CLOSE, CALL_OPEN


@dataclass(frozen=True)
class EntryResult:
    """How the model did on one entry."""

    id: str
    category: str
    ok: bool
    reason: str
    calls: int  # tool calls in the output
    strict_calls: int  # ... that are valid JSON as written, closed by </tool_call>
    parsed_calls: int  # ... that have a name and object arguments after our repair
    valid_calls: int  # ... that name an offered function and fit its schema
    latency_s: float
    output: str  # the model's raw text


@dataclass(frozen=True)
class CategoryScore:
    """One category's totals."""

    category: str
    entries: int
    accuracy: float
    strict_parse: float | None  # shares of the calls; None when there were none
    parse: float | None
    valid: float | None
    calls: int
    mean_latency_s: float


class _RecordingPrompt(RepairingFnCallPrompt):
    """Our parser, keeping the raw text it was given (to count what parses as written)."""

    raw: str = ""

    def postprocess_fncall_messages(self, messages: list[Message], *args: Any, **kw: Any) -> Any:
        self.raw = "".join(
            item.text or ""
            for message in messages
            for item in (message.content if isinstance(message.content, list) else [])
        )
        return super().postprocess_fncall_messages(messages, *args, **kw)


def run_entries(
    llm: BaseChatModel, entries: list[BfclEntry], require_tool: bool = False
) -> Iterator[EntryResult]:
    """Ask `llm` each entry once (its function choice `required` with `require_tool`)."""
    prompt = _RecordingPrompt()
    llm.fncall_prompt = prompt
    for entry in entries:
        yield _run_entry(llm, prompt, entry, REQUIRED if require_tool else AUTO)


def _run_entry(
    llm: BaseChatModel, prompt: _RecordingPrompt, entry: BfclEntry, choice: str
) -> EntryResult:
    functions = [tool_schema(function) for function in entry.functions]
    started = time.monotonic()
    output = llm.chat(
        messages=[Message(**message) for message in entry.messages],
        functions=functions,
        stream=False,
        extra_generate_cfg={TOOL_CHOICE_KEY: choice},
    )
    latency = time.monotonic() - started
    calls = [_decoded(m) for m in output if isinstance(m, Message) and m.function_call]
    parsed = [call for call in calls if call is not None]
    check = check_entry(
        entry.category,
        entry.functions,
        parsed if len(parsed) == len(calls) else None,
        entry.answers,
    )
    schemas = {function["name"]: function["parameters"] for function in functions}
    return EntryResult(
        id=entry.id,
        category=entry.category,
        ok=check.ok,
        reason=check.reason,
        calls=len(calls),
        strict_calls=strict_calls(prompt.raw),
        parsed_calls=len(parsed),
        valid_calls=sum(_fits(call, schemas) for call in parsed),
        latency_s=round(latency, 3),
        output=prompt.raw,
    )


def _decoded(message: Message) -> dict[str, Any] | None:
    """`{"name", "arguments"}` of a call message, or None when our repair could not parse it."""
    call = message.function_call
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        return None
    if not call.name or not isinstance(arguments, dict):
        return None
    return {"name": call.name, "arguments": arguments}


def _fits(call: dict[str, Any], schemas: dict[str, dict[str, Any]]) -> bool:
    schema = schemas.get(call["name"])
    return schema is not None and Draft202012Validator(schema).is_valid(call["arguments"])


def strict_calls(text: str) -> int:
    """Calls in `text` that parse as written: strict JSON with a string name and object
    arguments, closed by `</tool_call>` (what a standard Hermes parser accepts)."""
    count = 0
    for piece in text.split(CALL_OPEN)[1:]:
        body, closed, _ = piece.partition(CALL_CLOSE)
        try:
            call = json.loads(body)
        except ValueError:
            continue
        name_ok = isinstance(call, dict) and isinstance(call.get("name"), str)
        count += bool(closed and name_ok and isinstance(call.get("arguments"), dict))
    return count


def summarize(results: list[EntryResult]) -> list[CategoryScore]:
    """Per-category scores in the order categories first appear, then `all`."""
    categories = list(dict.fromkeys(result.category for result in results))
    groups = [[r for r in results if r.category == c] for c in categories]
    return [_score(c, g) for c, g in zip(categories, groups, strict=True)] + (
        [_score("all", results)] if len(categories) > 1 else []
    )


def _score(category: str, results: list[EntryResult]) -> CategoryScore:
    calls = sum(r.calls for r in results)

    def share(count: int) -> float | None:
        return round(count / calls, 4) if calls else None

    return CategoryScore(
        category=category,
        entries=len(results),
        accuracy=round(sum(r.ok for r in results) / len(results), 4),
        strict_parse=share(sum(r.strict_calls for r in results)),
        parse=share(sum(r.parsed_calls for r in results)),
        valid=share(sum(r.valid_calls for r in results)),
        calls=calls,
        mean_latency_s=round(sum(r.latency_s for r in results) / len(results), 3),
    )


def report(scores: list[CategoryScore], results: list[EntryResult]) -> dict[str, Any]:
    """The JSON written by `--out`: scores, then every entry."""
    return {
        "scores": [asdict(score) for score in scores],
        "entries": [asdict(result) for result in results],
    }
