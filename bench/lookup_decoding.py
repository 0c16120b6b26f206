"""Lookup decoding (agent/engine/lookup.py): what it saves on answers that quote their tool
results, and what it costs on text that quotes nothing.

    python -m bench.lookup_decoding [--quick] [--threads N] [--out bench/lookup_decoding.json]

Random weights measure cost, not behaviour (DESIGN.md), so the figures come in three parts,
each labelled in the JSON:
- `cost` (full-size architecture, random weights; the tiny one with --quick): a plain decode
  step, and verifying a decoded token with k drafted ones in one pass, at an agent prompt's
  context, round after round in turn; a line fitted through them prices a verification; the
  drafter's own work per token;
- `acceptance` (the trained tiny model, which copies values from tool results): its answers to
  held-out agent tasks, generated greedy and sampled (Qwen3's preset, presence penalty 1.5),
  with lookup decoding on and off: drafted and accepted tokens, tokens per verification, and
  whether greedy output stayed the same (the drafter judges what pays by the tiny model's own
  timings, where verifying is relatively cheaper);
- `replay` (no model): the drafter run over reference answers that quote real tool outputs (a
  JSON record, a directory listing, a time, a page excerpt) and over answers that quote
  nothing, as if the model wrote them (greedy), after prompts made by the product's template,
  told the time of each pass as the measured costs price it (it stops drafting where drafts
  do not pay);
`estimate` combines them: each set of drafts and acceptances priced at the full-size costs
against plain decoding's one step a token (an estimate, not a timing of a full-size answer).
`end-to-end check` (random weights) runs the real loop on the same architecture, lookup
decoding off and on: the same greedy output, and its measured speed-up beside the estimate's
for its counts (random weights repeat themselves, which drafts catch: not a figure of
behaviour). Beside it, in the same run, llama-cpp-python on the same checkpoint (GGUF Q8_0)
and prompt, greedy, plain and with its prompt-lookup draft model (`LlamaPromptLookupDecoding`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import torch

from agent.engine.generate import Usage, generate_token_ids
from agent.engine.kernels.choice import COMPILED, KernelChoice
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.lookup import LookupDrafter
from agent.engine.model import CpuQwen3
from bench.machine import cpu_features

REPO = Path(__file__).resolve().parents[1]
CONTEXT_TOKENS = 1400  # an agent prompt with the default tools' schemas (~1,370) and a question
DRAFT_SIZES = tuple(range(1, 9))
FUSED = KernelChoice(COMPILED, "dequantized float32", "bf16", "compiled")
SAMPLED_SEED = 7


def machine() -> dict[str, Any]:
    """The CPU and torch a figure holds for, the threads and the load."""
    return {**cpu_features(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "load_average": os.getloadavg()}  # fmt: skip


# --- cost: the full-size architecture, random weights ------------------------------------------


def verify_costs(model_dir: Path, rounds: int, fused: bool = False) -> dict[str, Any]:
    """Milliseconds of a plain decode step and of verifying 1 + k tokens at CONTEXT_TOKENS of
    context, the best of `rounds` rounds that each time every size in turn (the least
    disturbed on a shared machine); the line ms = fixed + per_draft_token * k fitted through
    the verifications. On the kernels chosen for this machine, or (`fused`) the fused step's."""
    loaded = load_local_model(str(model_dir), device="cpu")
    engine: Any = loaded.engine
    if fused:
        engine = CpuQwen3(engine.weights, prefix_cache_bytes=0, kernels=FUSED)
    if not engine.verifies_drafts:
        return {"error": f"no fused decode step on this machine ({loaded.kernel}): lookup is off"}
    prompt = [(i * 7919) % 150_000 for i in range(CONTEXT_TOKENS)]
    cache = engine.new_cache(CONTEXT_TOKENS + 16)
    engine.forward(prompt, cache)
    samples: dict[int, list[float]] = {k: [] for k in (0, *DRAFT_SIZES)}
    for _ in range(rounds + 1):  # the first round warms up
        for k, times in samples.items():
            tokens = prompt[100 : 101 + k]
            started = time.perf_counter()
            engine.verify(tokens, cache) if k else engine.forward(tokens, cache)
            times.append(time.perf_counter() - started)
            cache.truncate(CONTEXT_TOKENS)
    ms = {k: 1000 * min(times[1:]) for k, times in samples.items()}
    slope, fixed = _line([(k, ms[k]) for k in DRAFT_SIZES])
    step = ms[0]
    return {
        "model": model_dir.name,
        "kernels": engine.kernels.describe(),
        "context_tokens": CONTEXT_TOKENS,
        "decode_step_ms": round(step, 2),
        "verify_ms": {str(k): round(ms[k], 2) for k in DRAFT_SIZES},
        "verify_in_steps": {str(k): round(ms[k] / step, 2) for k in DRAFT_SIZES},
        "fit": {"fixed_ms": round(fixed, 2), "per_draft_token_ms": round(slope, 2)},
        "drafter_us_per_token": round(drafter_cost_us(prompt), 2),
    }


def _line(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least squares slope and intercept."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def drafter_cost_us(prompt: list[int], tokens: int = 500) -> float:
    """Microseconds a token of the drafter's work (draft, then extend) after indexing `prompt`,
    the prompt's indexing included, spread over `tokens` tokens."""
    started = time.perf_counter()
    drafter = LookupDrafter(prompt)
    for index in range(tokens):
        draft = drafter.draft(8)
        drafter.generated([prompt[index % len(prompt)]], len(draft), 0)
    return 1e6 * (time.perf_counter() - started) / tokens


# --- acceptance: the trained tiny model --------------------------------------------------------


def acceptance(model_dir: Path, per_kind: int) -> dict[str, Any]:
    """Per task kind and mode: the counts of lookup decoding on the trained model's answers."""
    from agent.config import NON_THINKING_PRESET
    from agent.testing.reproduction import GREEDY, held_out_runs
    from agent.testing.transcripts import encode_transcript

    native = load_local_model(str(model_dir), device="cpu", engine="native")
    weights = native.engine.weights  # type: ignore[attr-defined]
    engine = CpuQwen3(weights, prefix_cache_bytes=0, kernels=FUSED)
    loaded = dataclasses.replace(native, engine=engine)
    sampled = dataclasses.replace(NON_THINKING_PRESET, presence_penalty=1.5)
    report: dict[str, Any] = {}
    for zone, transcript in held_out_runs(per_kind):
        *_, answer = encode_transcript(transcript, loaded.tokenizer, zone)  # the quoting call
        for mode, params in (("greedy", GREEDY), ("sampled", sampled)):
            entry = report.setdefault(f"{transcript.kind} {mode}", _Tally())
            entry.add(loaded, list(answer.prompt), params)
    return {key: tally.summary() for key, tally in report.items()}


@dataclasses.dataclass
class _Tally:
    answers: int = 0
    same_output: int = 0
    plain: Usage = dataclasses.field(default_factory=Usage)
    lookup: Usage = dataclasses.field(default_factory=Usage)

    def add(self, loaded: LoadedModel, prompt: list[int], params: Any) -> None:
        outputs = [
            list(generate_token_ids(loaded, prompt, params, 200, SAMPLED_SEED, usage, lookup=on))
            for on, usage in ((False, self.plain), (True, self.lookup))
        ]
        self.answers += 1
        self.same_output += outputs[0] == outputs[1]

    def summary(self) -> dict[str, Any]:
        usage = self.lookup
        return {
            "answers": self.answers,
            "same_output_as_plain": self.same_output,
            "tokens": usage.completion_tokens,
            **_counts(
                usage.completion_tokens,
                usage.verifications,
                usage.drafted_tokens,
                usage.accepted_tokens,
            ),  # fmt: skip
            "tiny_model_decode_s": {
                "plain": round(self.plain.decode_s, 3),
                "lookup": round(usage.decode_s, 3),
            },
        }


def _counts(tokens: int, verifications: int, drafted: int, accepted: int) -> dict[str, Any]:
    return {
        "verifications": verifications,
        "drafted": drafted,
        "accepted": accepted,
        "accepted_share_of_drafted": round(accepted / drafted, 3) if drafted else None,
        "tokens_per_verification": round((accepted + verifications) / verifications, 2)
        if verifications
        else None,
        "forward_passes_per_token": round((tokens - accepted) / tokens, 3) if tokens else None,
    }


# --- replay: reference answers quoting real tool outputs --------------------------------------


def reference_answers() -> list[tuple[str, str, str, str]]:
    """(name, tool, tool output, answer) for real tool outputs made here; the last ones'
    answers quote nothing."""
    project = _project_record()
    record = json.dumps(project, indent=2)
    deps = project["dependencies"]
    listing = subprocess.run(
        ["ls", "-l", "agent/engine"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    files = [line.split() for line in listing.splitlines()[1:] if line.endswith(".py")]
    now = datetime.now(ZoneInfo("Asia/Tokyo"))
    time_result = json.dumps(
        {"timezone": "Asia/Tokyo", "datetime": now.isoformat(timespec="seconds"),
         "day_of_week": now.strftime("%A"), "is_dst": False}, indent=2,
    )  # fmt: skip
    page = _readme_paragraph("## The resident service")
    url = "https://example.org/agent/README.html"
    return [
        (
            "JSON record",
            "code_interpreter",
            record,
            f"The package is {project['name']}, which needs Python {project['requires-python']}. "
            f"It depends on {deps[0]}, {deps[1]}, {deps[5]} and {deps[6]}, among "
            f"{len(deps)} requirements.",
        ),
        (
            "directory listing",
            "code_interpreter",
            listing,
            "agent/engine holds these Python files:\n"
            + "\n".join(f"- {f[-1]} ({f[4]} bytes, changed {' '.join(f[5:8])})" for f in files),
        ),
        (
            "time",
            "time-get_current_time",
            time_result,
            f"The time in Tokyo is {now.isoformat(timespec='seconds')}, a {now:%A}.",
        ),
        (
            "page excerpt",
            "fetch-fetch",
            f"Contents of {url}:\n{page}",
            f"The page says:\n{'. '.join(page.split('. ')[:3])}.",
        ),
        ("quotes nothing: summary", "fetch-fetch", f"Contents of {url}:\n{page}", SUMMARY),
        ("quotes nothing: no tool", "", "", ESSAY),
    ]


SUMMARY = (
    "In short, a helper process stays running in the background so that later commands do "
    "not pay again for loading weights or starting servers. Each user gets a private one, "
    "reachable through a local socket, and it quits by itself after sitting idle for a while. "
    "When two commands want the model simultaneously, the second one waits and is told why."
)
ESSAY = (
    "Speculative decoding trades arithmetic for memory traffic. A small language model on a "
    "laptop spends most of each step streaming weights from memory, while its arithmetic "
    "units idle; checking several guessed tokens at once uses that idle capacity. Whether it "
    "helps depends on how often the guesses are right: cheap guesses that usually fail cost "
    "more than they save, which is why a careful implementation watches its own success rate "
    "and backs off when guessing does not pay."
)


def _project_record() -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    keys = ("name", "description", "requires-python", "dependencies")
    return {key: project[key] for key in keys}


def _readme_paragraph(heading: str) -> str:
    text = (REPO / "README.md").read_text().split(heading, 1)[1].split("\n\n", 2)[1]
    return " ".join(text.split())


def replay(tokenizer: Any, cost: dict[str, Any]) -> dict[str, Any]:
    """The drafter over each reference answer, after its prompt, as if the model wrote it,
    its passes timed as `cost` prices them."""
    report = {}
    for name, tool, output, answer in reference_answers():
        prompt = agent_prompt(tokenizer, tool, output)
        target = tokenizer(answer, add_special_tokens=False)["input_ids"]
        report[name] = {"prompt_tokens": len(prompt), **replay_counts(prompt, target, cost)}
    return report


def agent_prompt(tokenizer: Any, tool: str, output: str) -> list[int]:
    """The prompt of an agent's answer after calling `tool` (none: "") that gave `output`, with
    the default tools offered, from the product's chat template."""
    from agent.testing.transcripts import load_tool_schemas

    tools = [{"type": "function", "function": f} for f in load_tool_schemas()]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Please answer from the tool's result."},
    ]
    if tool:
        call = {"name": tool, "arguments": {}}
        messages += [
            {"role": "assistant", "content": "", "tool_calls": [{"function": call}]},
            {"role": "tool", "content": output},
        ]
    text = tokenizer.apply_chat_template(
        messages, tools=tools, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def replay_counts(prompt: list[int], target: list[int], cost: dict[str, Any]) -> dict[str, Any]:
    """Drafts and acceptances writing `target` after `prompt`: a drafted token is accepted
    while it is the target's next one (greedy decoding of a model that writes the target);
    the drafter is told each pass's time as `cost` prices it (none where it has no fit)."""
    drafter = LookupDrafter(prompt)
    written = verifications = drafted = accepted = 0
    while written < len(target):
        draft = drafter.draft(len(target) - written - 1)
        taken = 0
        while taken < len(draft) and draft[taken] == target[written + taken]:
            taken += 1
        new = target[written : written + taken + 1]
        drafter.generated(new, len(draft), taken, _pass_seconds(cost, len(draft)))
        written += len(new)
        verifications += bool(draft)
        drafted += len(draft)
        accepted += taken
    return {"tokens": len(target), **_counts(len(target), verifications, drafted, accepted)}


def _pass_seconds(cost: dict[str, Any], drafted: int) -> float | None:
    """A forward pass's time at the measured costs: a plain step, or a verification."""
    if "fit" not in cost:
        return None
    if not drafted:
        return float(cost["decode_step_ms"]) / 1000
    fit = cost["fit"]
    return float(fit["fixed_ms"] + drafted * fit["per_draft_token_ms"]) / 1000


# --- a check of the estimate: the real loop on the full-size architecture --------------------


def end_to_end(model_dir: Path, fused: bool, tokens: int = 64) -> dict[str, Any]:
    """Greedy decoding of `tokens` tokens after a page-excerpt agent prompt, lookup decoding
    off and on in turn (twice each): whether the output is the same, the decode times, and the
    counts. The random weights' output is no model's behaviour (it may repeat itself, which
    drafts catch): this checks exactness and the estimate's arithmetic, it is not a figure of
    what lookup decoding saves."""
    from agent.testing.reproduction import GREEDY

    loaded = load_local_model(str(model_dir), device="cpu")
    if fused:
        weights = loaded.engine.weights  # type: ignore[attr-defined]
        loaded = dataclasses.replace(loaded, engine=CpuQwen3(weights, 0, kernels=FUSED))
    prompt = page_excerpt_prompt(loaded.tokenizer)
    outputs: dict[bool, list[int]] = {}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    counts = Usage()
    for lookup in (False, True, False, True):
        usage = Usage() if not lookup or counts.calls else counts
        usage.calls += 1
        outputs[lookup] = list(
            generate_token_ids(loaded, prompt, GREEDY, tokens, 0, usage, lookup=lookup)
        )
        seconds[lookup].append(usage.decode_s)
    plain, lookup_s = min(seconds[False]), min(seconds[True])
    return {
        "tokens": len(outputs[True]),
        "same_greedy_output": outputs[False] == outputs[True],
        "decode_s": {"plain": round(plain, 3), "lookup": round(lookup_s, 3)},
        "measured_speedup": round(plain / lookup_s, 3),
        **_counts(
            counts.completion_tokens,
            counts.verifications,
            counts.drafted_tokens,
            counts.accepted_tokens,
        ),  # fmt: skip
    }


def page_excerpt_prompt(tokenizer: Any) -> list[int]:
    """The end-to-end checks' prompt: an agent's, after fetching a page."""
    _, tool, output, _ = reference_answers()[3]
    return agent_prompt(tokenizer, tool, output)


LLAMA_CPP_DRAFT_TOKENS = 10  # LlamaPromptLookupDecoding's num_pred_tokens, as its docs show it


def llama_cpp_end_to_end(model_dir: Path, prompt: list[int], tokens: int = 64) -> dict[str, Any]:
    """llama-cpp-python decoding `tokens` tokens greedy after `prompt` on `model_dir` converted
    to GGUF Q8_0, plain and with its prompt-lookup draft model, twice each: decode seconds from
    the first token to the last (the prompt's prefill left out), and whether the outputs match."""
    from bench.llama_cpp import gguf_for, open_model, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        return {"error": reason}
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    gguf, threads = gguf_for(model_dir), torch.get_num_threads()
    outputs: dict[bool, list[int]] = {}
    seconds: dict[bool, float] = {}
    for lookup in (False, True):
        draft = (
            LlamaPromptLookupDecoding(num_pred_tokens=LLAMA_CPP_DRAFT_TOKENS) if lookup else None
        )
        llm = open_model(gguf, threads, n_ctx=len(prompt) + tokens + 64, draft_model=draft)
        for _ in range(2):
            llm.reset()  # the prompt prefilled again, not reused from the last run
            generated, first = [], 0.0
            for token in llm.generate(prompt, top_k=1, temp=0.0):
                first = first or time.perf_counter()
                generated.append(int(token))
                if len(generated) == tokens:
                    break
            elapsed = time.perf_counter() - first
            seconds[lookup] = min(seconds.get(lookup, elapsed), elapsed)
            outputs[lookup] = generated
        llm.close()
    decoded = tokens - 1  # tokens after the first
    return {
        "tokens": tokens,
        "draft_tokens": LLAMA_CPP_DRAFT_TOKENS,
        "same_greedy_output": outputs[False] == outputs[True],
        "decode_s": {"plain": round(seconds[False], 3), "lookup": round(seconds[True], 3)},
        "tokens_per_s": {
            "plain": round(decoded / seconds[False], 2),
            "lookup": round(decoded / seconds[True], 2),
        },
        "measured_speedup": round(seconds[False] / seconds[True], 3),
    }


# --- estimate: acceptance and replay priced at the full-size costs ----------------------------


def estimate(counts: dict[str, Any], cost: dict[str, Any]) -> dict[str, float] | None:
    """Plain decoding's time over lookup decoding's for these counts, at the measured costs:
    each token a step plainly; with lookup, a step for each token neither accepted nor
    verified, the fitted line for each verification, and the drafter's work on every token."""
    if "fit" not in cost or not counts.get("tokens"):
        return None
    step, fit = cost["decode_step_ms"], cost["fit"]
    tokens, verifications = counts["tokens"], counts["verifications"]
    plain_steps = tokens - counts["accepted"] - verifications
    lookup_ms = (
        plain_steps * step
        + verifications * fit["fixed_ms"]
        + counts["drafted"] * fit["per_draft_token_ms"]
        + tokens * cost["drafter_us_per_token"] / 1000
    )
    return {"speedup_over_plain": round(tokens * step / lookup_ms, 3)}


def measure(quick: bool) -> dict[str, Any]:
    from agent.testing.tiny_model import TRAINED_GPTQ_SUBDIR, cached_tiny_checkpoint
    from bench.random_checkpoint import cached_checkpoint

    trained = cached_tiny_checkpoint() / TRAINED_GPTQ_SUBDIR
    model_dir = cached_checkpoint("tiny" if quick else "full")
    cost = verify_costs(model_dir, 2 if quick else 7, quick)
    check = end_to_end(model_dir, quick)
    check["estimated_speedup"] = (estimate(check, cost) or {}).get("speedup_over_plain")
    tokenizer = load_local_model(str(trained), device="cpu").tokenizer  # Qwen3's, as the bench's
    peer = llama_cpp_end_to_end(model_dir, page_excerpt_prompt(tokenizer), check["tokens"])
    accepted = acceptance(trained, 1 if quick else 4)
    replayed = replay(tokenizer, cost)
    return {
        "command": "python -m bench.lookup_decoding"
        + (" --quick" if quick else "")
        + f" --threads {torch.get_num_threads()}",
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "cost (random weights)": cost,
        "end-to-end check (random weights)": check,
        "llama-cpp-python, same checkpoint and prompt (random weights)": peer,
        "acceptance (trained tiny model)": accepted,
        "replay (reference answers, no model)": replayed,
        "estimate (counts above x full-size cost)": {
            "trained tiny model's answers": {k: estimate(v, cost) for k, v in accepted.items()},
            "reference answers": {k: estimate(v, cost) for k, v in replayed.items()},
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: measure, print and write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.lookup_decoding", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="cost on the tiny architecture")
    parser.add_argument("--out", type=Path, default=Path("bench/lookup_decoding.json"))
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 2))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if not args.out.parent.is_dir():
        parser.error(f"--out: directory {args.out.parent} does not exist")
    report = measure(args.quick)
    text = json.dumps(report, indent=1)
    print(text)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
