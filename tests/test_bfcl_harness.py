"""`agent eval bfcl`: recorded model outputs for real entries scored as BFCL's rules say, the
parse and schema shares counted, and the command run end to end on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from agent.eval.bfcl import run_entries, strict_calls, summarize
from agent.eval.bfcl_data import load_entries
from agent.testing.transcripts import ScriptedLLM
from tests.clirun import agent_cli, json_events


def call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


TRIANGLE = "calculate_triangle_area"
SPOTIFY = "spotify.play"


@pytest.mark.parametrize(
    ("entry_id", "output", "ok", "reason", "strict", "parsed", "valid"),
    [
        ("simple_python_0", call(TRIANGLE, '{"base": 10, "height": 5}'), True, "", 1, 1, 1),
        (
            "simple_python_0",
            call(TRIANGLE, '{"base": 10, "height": 5, "unit": "units"}'),
            True, "", 1, 1, 1,
        ),
        (
            "simple_python_0",
            call(TRIANGLE, '{"base": 10.0, "height": 5}'),
            False, "wrong type for 'base'", 1, 1, 1,
        ),
        (
            "simple_python_0",
            call(TRIANGLE, '{"base": 10}'),
            False, "missing required parameter 'height'", 1, 1, 0,
        ),
        (
            "simple_python_0",
            '<tool_call>\n{"name": "calculate_triangle_area", "arguments": {"base": 10, '
            '"height": 5}\n</tool_call>',
            True, "", 0, 1, 1,
        ),
        ("simple_python_0", "The area is 25.", False, "wrong number of calls", 0, 0, 0),
        ("simple_python_0", '<tool_call>\n{"arguments": {}}\n</tool_call>', False, "", 0, 0, 0),
        (
            "parallel_0",
            call(SPOTIFY, '{"artist": "Maroon 5", "duration": 15}')
            + "\n"
            + call(SPOTIFY, '{"artist": "taylor swift", "duration": 20}'),
            True, "", 2, 2, 2,
        ),
        (
            "parallel_0",
            call(SPOTIFY, '{"artist": "Maroon 5", "duration": 15}'),
            False, "wrong number of calls", 1, 1, 1,
        ),
        ("irrelevance_0", "I cannot compute that with these tools.", True, "", 0, 0, 0),
        (
            "irrelevance_0",
            call("determine_body_mass_index", '{"weight": 10, "height": 5}'),
            False, "function called when none applies", 1, 1, 1,
        ),
    ],
)  # fmt: skip
def test_recorded_outputs_are_scored_as_bfcl_scores_them(
    qwen3_tokenizer: PreTrainedTokenizerFast,
    entry_id: str,
    output: str,
    ok: bool,
    reason: str,
    strict: int,
    parsed: int,
    valid: int,
) -> None:
    category = entry_id.rsplit("_", 1)[0].removesuffix("_python")
    [entry] = [e for e in load_entries([category], limit=5) if e.id == entry_id]
    llm = ScriptedLLM(qwen3_tokenizer, [output], thinking=False)
    [result] = run_entries(llm, [entry])
    assert (result.ok, result.strict_calls, result.parsed_calls, result.valid_calls) == (
        ok,
        strict,
        parsed,
        valid,
    )
    assert reason in result.reason
    assert result.output == output


def test_strict_parsing_is_what_a_standard_hermes_parser_accepts() -> None:
    good = call("f", '{"a": 1}')
    assert strict_calls(good + "\n" + good) == 2
    assert strict_calls(good.replace("</tool_call>", "")) == 0  # cut off
    assert strict_calls(call("f", '{"a": "x\ny"}')) == 0  # raw newline in a string
    assert strict_calls(call("f", "{'a': 1}")) == 0  # JSON5
    assert strict_calls('<tool_call>\n{"arguments": {}}\n</tool_call>') == 0


def test_scores_sum_up_per_category_and_overall(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    entries = load_entries(["simple", "irrelevance"], limit=1)
    outputs = [call(TRIANGLE, '{"base": 10, "height": 5}'), "No tool fits."]
    results = list(run_entries(ScriptedLLM(qwen3_tokenizer, outputs, False), entries))
    simple, irrelevance, overall = summarize(results)
    assert (simple.category, simple.accuracy, simple.calls, simple.valid) == ("simple", 1, 1, 1)
    assert (irrelevance.accuracy, irrelevance.calls, irrelevance.parse) == (1, 0, None)
    assert (overall.category, overall.entries, overall.accuracy) == ("all", 2, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--categories", "live_simple"], "unknown BFCL category 'live_simple'"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--out", "no/such/dir/report.json"], "--out: directory no/such/dir does not exist"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    done = agent_cli("eval", "bfcl", *args, home=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {message}") and done.stderr.count("\n") == 1


@pytest.mark.slow
def test_one_command_runs_the_harness_on_the_local_model(tiny_gptq: Path, tmp_path: Path) -> None:
    report = tmp_path / "bfcl.json"
    done = agent_cli(
        "eval", "bfcl", "--model", str(tiny_gptq), "--limit", "1", "--require-tool",
        "--max-new-tokens", "48", "--json", "--out", str(report), home=tmp_path / "home",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = json_events(done.stdout)
    entries = [line for line in lines if line["type"] == "entry"]
    scores = {line["category"]: line for line in lines if line["type"] == "score"}
    assert len(entries) == 5 and set(scores) == {
        "simple", "multiple", "parallel", "parallel_multiple", "irrelevance", "all",
    }  # fmt: skip
    # Random weights, constrained from the first token: nonsense, but every call is valid.
    assert scores["all"]["calls"] >= 5 and scores["all"]["valid"] == 1.0
    written = json.loads(report.read_text())
    assert [s["category"] for s in written["scores"]] == list(scores)
    assert [e["id"] for e in written["entries"]] == [e["id"] for e in entries]


@pytest.mark.slow
def test_a_short_budget_never_cuts_a_call_in_half(tiny_gptq: Path) -> None:
    # With few tokens left after a call, no further call is started (it could not finish):
    # over many seeds, every call made in 48 tokens is whole and valid.
    from agent.config import Settings
    from agent.loop.assistant import build_llm

    entries = load_entries(["parallel", "parallel_multiple"], 1)
    made = 0
    for seed in range(30):
        settings = Settings(model=str(tiny_gptq), seed=seed, max_new_tokens=48, require_tool=True)
        for result in run_entries(build_llm(settings), entries, require_tool=True):
            assert result.valid_calls == result.calls, (seed, result.output)
            made += result.calls
    assert made >= 60
