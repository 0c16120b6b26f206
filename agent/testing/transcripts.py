"""Scripted agent runs the tiny test model is trained on, rendered by the product's own path.

Each transcript is one user task: the model's scripted outputs and the tools' results. Its
prompts are recorded by running the real `AgentAssistant` (Qwen-Agent's function-calling prompt,
our chat template) with a scripted LLM and tools that have the exact schemas of the default
tools (`default_tool_schemas.json`, captured from the real servers), so the model learns the
prompts `agent run` really sends. Values (times, pages, numbers) are drawn at random, so the
model learns to copy them rather than memorise them.

    python -m agent.testing.transcripts capture   # refresh default_tool_schemas.json
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from qwen_agent.llm.function_calling import BaseFnCallModel
from qwen_agent.llm.schema import ASSISTANT, Message
from qwen_agent.tools.base import BaseTool

from agent.backends.local import render_prompt
from agent.backends.tool_choice import AUTO, TOOL_CHOICE_KEY
from agent.config import Settings
from agent.tools.toolset import ToolEntry, Toolset

SCHEMAS_PATH = Path(__file__).with_name("default_tool_schemas.json")
# mcp-server-time writes the machine's time zone into its schema; the model is trained with many.
CAPTURED_LOCAL_TIMEZONE = "Etc/UTC"

CITIES = {
    "Tokyo": "Asia/Tokyo",
    "London": "Europe/London",
    "Paris": "Europe/Paris",
    "Berlin": "Europe/Berlin",
    "New York": "America/New_York",
    "Los Angeles": "America/Los_Angeles",
    "Chicago": "America/Chicago",
    "Sydney": "Australia/Sydney",
    "Singapore": "Asia/Singapore",
    "Dubai": "Asia/Dubai",
    "Mumbai": "Asia/Kolkata",
    "São Paulo": "America/Sao_Paulo",
}
LOCAL_TIMEZONES = ("Etc/UTC", "UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai")
# The words of test pages: few, so that each is copied often in training (the model can only
# copy tokens it was trained on, and learns to copy a word from seeing it copied).
_PAGE_WORDS = "meeting room train lunch report office garden library moved closes opens at is on"
WORDS = tuple(_PAGE_WORDS.split())
PAGE_NAMES = ("notes", "page", "index", "news", "menu", "status", "report", "todo")
GREETINGS = {
    "Hello": "Hello! I am a tiny test model: I can tell the time, fetch a page, "
    "run Python code and use the calculator.",
    "Hi": "Hi! Ask me for the time, a web page, some Python or a sum.",
    "Who are you?": "I am a tiny Qwen3 test model that only knows its scripted tasks.",
}
THINKING_RATE = 0.3
IM_END_ID = 151645


@dataclass(frozen=True)
class Transcript:
    """One scripted task: the user's words, the model's outputs in order, the tools' results."""

    kind: str
    user: str
    outputs: tuple[str, ...]
    results: tuple[str, ...]
    thinking: bool
    quoted: str  # the value the final answer must contain


@dataclass(frozen=True)
class Example:
    """One model call as token ids: the prompt, and the output ending with `<|im_end|>`."""

    prompt: tuple[int, ...]
    target: tuple[int, ...]


def tool_call_text(name: str, arguments: dict[str, Any]) -> str:
    """A Hermes-style tool call as Qwen3 writes it."""
    call = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{call}\n</tool_call>"


def _with_thoughts(thought: str, text: str, thinking: bool) -> str:
    return f"<think>\n{thought}\n</think>\n\n{text}" if thinking else text


def _tool_task(
    kind: str,
    user: str,
    call: tuple[str, dict[str, Any]],
    result: str,
    answer: str,
    quoted: str,
    thinking: bool,
) -> Transcript:
    name, arguments = call
    first = _with_thoughts(f"I will call {name}.", tool_call_text(name, arguments), thinking)
    last = _with_thoughts(f"{name} answered.", answer, thinking)
    return Transcript(kind, user, (first, last), (result,), thinking, quoted)


def time_task(rng: random.Random, thinking: bool = False) -> Transcript:
    """The time in a city: a `time-get_current_time` call, then the datetime it returned."""
    city = rng.choice(sorted(CITIES))
    zone = CITIES[city]
    moment = datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=rng.randrange(6 * 10**8))
    local = moment.astimezone(ZoneInfo(zone))
    stamp = local.isoformat(timespec="seconds")
    result = {
        "timezone": zone,
        "datetime": stamp,
        "day_of_week": local.strftime("%A"),
        "is_dst": bool(local.dst()),
    }
    return _tool_task(
        "time",
        f"What time is it in {city}?",
        ("time-get_current_time", {"timezone": zone}),
        json.dumps(result, indent=2),
        f"The time in {city} is {stamp}.",
        stamp,
        thinking,
    )


def page_sentence(rng: random.Random) -> str:
    """A short sentence of known words (none twice) and a number, as a test page holds."""
    words = rng.sample(WORDS, rng.randint(2, 3))
    words.insert(rng.randrange(len(words) + 1), str(rng.randrange(10, 10**5)))
    sentence = " ".join(words)
    return sentence[0].upper() + sentence[1:] + "."


def fetch_task(rng: random.Random, thinking: bool = False) -> Transcript:
    """A page on 127.0.0.1: a `fetch-fetch` call with its URL, then the page quoted."""
    url = f"http://127.0.0.1:{rng.randrange(1024, 65536)}/{rng.choice(PAGE_NAMES)}.html"
    return fetch_task_for(url, page_sentence(rng), thinking)


def fetch_task_for(url: str, text: str, thinking: bool = False) -> Transcript:
    """The fetch task for one URL whose page (as mcp-server-fetch renders it) is `text`."""
    return _tool_task(
        "fetch",
        f"What does {url} say?",
        ("fetch-fetch", {"url": url}),
        f"Contents of {url}:\n{text}",
        f"The page says:\n{text}",  # after a newline, as in the result: the same tokens
        text,
        thinking,
    )


def _operands(rng: random.Random) -> tuple[int, str, int, int]:
    a, b = rng.randrange(1, 10 ** rng.randint(1, 4)), rng.randrange(1, 10 ** rng.randint(1, 4))
    op = rng.choice("+-*")
    return a, op, b, {"+": a + b, "-": a - b, "*": a * b}[op]


def code_task(rng: random.Random, thinking: bool = False) -> Transcript:
    """Arithmetic in Python: a `code_interpreter` call, then the printed result."""
    a, op, b, value = _operands(rng)
    return _tool_task(
        "code",
        f"Use Python to compute {a} {op} {b}.",
        ("code_interpreter", {"code": f"print({a} {op} {b})"}),
        f"{value}\n",
        f"The result is {value}.",
        str(value),
        thinking,
    )


def calculator_task(rng: random.Random, thinking: bool = False) -> Transcript:
    """Arithmetic with the shipped `calculator` plugin tool."""
    a, op, b, value = _operands(rng)
    return _tool_task(
        "calculator",
        f"Calculate {a} {op} {b} with the calculator.",
        ("calculator", {"expression": f"{a} {op} {b}"}),
        str(value),
        f"{a} {op} {b} = {value}.",
        str(value),
        thinking,
    )


def greeting_task(rng: random.Random, thinking: bool = False) -> Transcript:
    """A plain answer, no tool."""
    user = rng.choice(sorted(GREETINGS))
    answer = _with_thoughts("No tool is needed.", GREETINGS[user], thinking)
    return Transcript("greeting", user, (answer,), (), thinking, GREETINGS[user])


TASKS = {
    "time": time_task,
    "fetch": fetch_task,
    "code": code_task,
    "calculator": calculator_task,
    "greeting": greeting_task,
}


def random_transcript(rng: random.Random) -> Transcript:
    """A task of a random kind with random values, in thinking mode now and then; fetch
    twice as often, its pages being the hardest to copy."""
    kind = rng.choice([*sorted(TASKS), "fetch"])
    return TASKS[kind](rng, rng.random() < THINKING_RATE)


def value_token_ids(tokenizer: Any) -> set[int]:
    """Every token a random value can bring, alone, capitalised and after a space: the model
    can only copy tokens whose embedding was trained."""
    pieces = [*WORDS, *CITIES, *CITIES.values(), *PAGE_NAMES, *"0123456789"]
    forms = {form for p in pieces for form in (p, p[0].upper() + p[1:])}
    texts = [text for form in forms for text in (form, f" {form}")]
    return {i for ids in tokenizer(texts)["input_ids"] for i in ids}


def random_runs(count: int, seed: int) -> list[tuple[str, Transcript]]:
    """`count` random transcripts, each with the local time zone its tool schemas carry."""
    rng = random.Random(seed)
    return [(rng.choice(LOCAL_TIMEZONES), random_transcript(rng)) for _ in range(count)]


# --- rendering through the product's own path --------------------------------------------------


def load_tool_schemas(local_timezone: str = CAPTURED_LOCAL_TIMEZONE) -> list[dict[str, Any]]:
    """The default tools' schemas (as `agent run` offers them), with this local time zone."""
    text = SCHEMAS_PATH.read_text(encoding="utf-8")
    return json.loads(text.replace(f"'{CAPTURED_LOCAL_TIMEZONE}'", f"'{local_timezone}'"))


class ScriptedTool(BaseTool):
    """A tool with a real tool's schema that returns the transcript's next result."""

    def __init__(self, schema: dict[str, Any], results: list[str]) -> None:
        self.name = schema["name"]
        self.description = schema["description"]
        self.parameters = schema["parameters"]
        super().__init__()
        self._results = results

    def call(self, params: str | dict, **kwargs: Any) -> str:
        return self._results.pop(0)


class ScriptedLLM(BaseFnCallModel):
    """A model that says the transcript's outputs and records each prompt it was given."""

    def __init__(self, tokenizer: Any, outputs: list[str], thinking: bool) -> None:
        super().__init__({"model": "scripted", "generate_cfg": {}})
        self.tokenizer, self.outputs, self.thinking = tokenizer, outputs, thinking
        self.prompts: list[str] = []
        self.tool_choices: list[str] = []  # what the tool loop allowed at each call

    def _chat_stream(
        self, messages: list[Message], delta_stream: bool, generate_cfg: dict
    ) -> Iterator[list[Message]]:
        yield self._chat_no_stream(messages, generate_cfg)

    def _chat_no_stream(self, messages: list[Message], generate_cfg: dict) -> list[Message]:
        self.prompts.append(render_prompt(self.tokenizer, messages, self.thinking))
        self.tool_choices.append(generate_cfg.get(TOOL_CHOICE_KEY, AUTO))
        return [Message(ASSISTANT, self.outputs.pop(0))]


def render_transcript(
    transcript: Transcript, tokenizer: Any, schemas: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    """(prompt, output) for each model call of the transcript, as `agent run` renders them."""
    from agent.loop.assistant import build_assistant

    llm = ScriptedLLM(tokenizer, list(transcript.outputs), transcript.thinking)
    results = list(transcript.results)
    tools = Toolset([ToolEntry(ScriptedTool(schema, results), "scripted") for schema in schemas])
    assistant = build_assistant(Settings(), llm, tools)
    for _ in assistant.run(messages=[{"role": "user", "content": transcript.user}]):
        pass
    if llm.outputs or len(llm.prompts) != len(transcript.outputs):
        raise RuntimeError(f"transcript {transcript.kind!r} did not run as scripted")
    return list(zip(llm.prompts, transcript.outputs, strict=True))


def encode_transcript(
    transcript: Transcript, tokenizer: Any, local_timezone: str = CAPTURED_LOCAL_TIMEZONE
) -> list[Example]:
    """The transcript's model calls as token ids: each prompt, and its output + `<|im_end|>`."""
    pairs = render_transcript(transcript, tokenizer, load_tool_schemas(local_timezone))
    return [
        Example(
            tuple(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
            tuple(tokenizer(output, add_special_tokens=False)["input_ids"]) + (IM_END_ID,),
        )
        for prompt, output in pairs
    ]


# --- capturing the real schemas ----------------------------------------------------------------


def capture_default_schemas() -> list[dict[str, Any]]:
    """The schemas of every default tool, from the real MCP servers, kernel tool and plugins."""
    import os
    import tempfile

    from agent.tools.toolset import open_toolset

    os.environ["TZ"] = CAPTURED_LOCAL_TIMEZONE  # the time server puts it in its schema
    with (
        tempfile.TemporaryDirectory() as scratch,
        open_toolset(Settings(), Path(scratch) / "work", Path(scratch) / "logs") as toolset,
    ):
        if toolset.problems:
            raise RuntimeError("; ".join(toolset.problems))
        return [tool.function for tool in toolset.tools]


def main(argv: list[str] | None = None) -> int:
    """Command line: `capture` rewrites default_tool_schemas.json from the real tools."""
    parser = argparse.ArgumentParser(prog="python -m agent.testing.transcripts")
    parser.add_argument("command", choices=["capture"])
    parser.parse_args(argv)
    schemas = capture_default_schemas()
    SCHEMAS_PATH.write_text(json.dumps(schemas, indent=1, ensure_ascii=False) + "\n")
    print(f"{SCHEMAS_PATH}: {len(schemas)} tools")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
