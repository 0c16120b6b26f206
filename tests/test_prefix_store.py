"""The prefix store: the system prompt and tools' keys and values kept on disk, so a fresh
process (`agent run`, a scheduled job) continues from them; exact, bounded and shared safely."""

import dataclasses
import multiprocessing
import os
import random
import shutil
from pathlib import Path

import pytest
import torch

from agent.engine.generate import Usage, generate_token_ids
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.model import CpuQwen3
from agent.engine.prefix_store import PrefixStore
from agent.testing.reproduction import GREEDY
from agent.testing.transcripts import encode_transcript, time_task
from tests.clirun import agent_cli, empty_mcp_config, json_events


def entry(tokens: list[int], fill: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    keys = torch.full((2, 1, len(tokens), 4), fill, dtype=torch.bfloat16)
    return keys, keys + 1


def store_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith(".lock"))


def with_store(loaded: LoadedModel, store: PrefixStore | None) -> LoadedModel:
    """The same weights and tokenizer in a new engine: no prefix in memory, like a new process."""
    assert isinstance(loaded.engine, CpuQwen3)
    return dataclasses.replace(loaded, engine=CpuQwen3(loaded.engine.weights, 64 << 20, store))


def greedy(loaded: LoadedModel, prompt: list[int], usage: Usage) -> list[int]:
    return list(generate_token_ids(loaded, prompt, GREEDY, 12, 0, usage))


@pytest.mark.slow
def test_a_new_engine_continues_from_the_stored_prefix_exactly(
    tiny_trained_gptq: Path, tmp_path: Path
) -> None:
    loaded = load_local_model(str(tiny_trained_gptq), device="cpu", kv_cache_mb=64)
    store = PrefixStore(tmp_path / "prefixes", "tiny", 256 << 20)
    first_call = list(encode_transcript(time_task(random.Random(3)), loaded.tokenizer)[0].prompt)
    later_call = list(encode_transcript(time_task(random.Random(7)), loaded.tokenizer)[1].prompt)
    stable = loaded.stable_prefix(first_call)
    assert 0 < stable < len(first_call)  # the system prompt and tools, before the user's turn
    assert later_call[:stable] == first_call[:stable]
    computing, reusing, later = Usage(), Usage(), Usage()
    from_scratch = greedy(with_store(loaded, None), first_call, Usage())
    assert greedy(with_store(loaded, store), first_call, computing) == from_scratch
    assert computing.reused_prompt_tokens == 0 and store.path_for(first_call[:stable]).is_file()
    assert greedy(with_store(loaded, store), first_call, reusing) == from_scratch
    assert reusing.reused_prompt_tokens == stable
    # Another task, a later step (a tool result in it): the same system part, the same answer.
    later_from_scratch = greedy(with_store(loaded, None), later_call, Usage())
    assert greedy(with_store(loaded, store), later_call, later) == later_from_scratch
    assert later.reused_prompt_tokens == stable
    assert len(store_files(store.directory)) == 1  # both prompts share one system part


def test_the_least_recently_used_entries_go_beyond_the_budget(tmp_path: Path) -> None:
    one = sum(t.nbytes for t in entry([1, 2]))
    store = PrefixStore(tmp_path, "model", max_bytes=3 * one + 1024)  # 3 entries and headers
    for first in range(3):
        store.save([first, 2], *entry([first, 2]))
    os.utime(store.path_for([0, 2]), ns=(1, 1))  # the oldest ...
    assert store.load([0, 2]) is not None  # ... until it is used again
    os.utime(store.path_for([1, 2]), ns=(1, 1))
    store.save([3, 2], *entry([3, 2]))
    assert [store.path_for([n, 2]).is_file() for n in range(4)] == [True, False, True, True]


def test_a_damaged_or_foreign_entry_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, "model", 1 << 20)
    store.save([5, 6, 7], *entry([5, 6, 7]))
    loaded = store.load([5, 6, 7])
    assert loaded is not None and torch.equal(loaded.values, entry([5, 6, 7])[1])
    path = store.path_for([5, 6, 7])
    path.write_bytes(path.read_bytes()[:100])  # a truncated file
    assert store.load([5, 6, 7]) is None and not path.exists()
    store.save([5, 6, 7], *entry([5, 6, 7]))
    other = PrefixStore(tmp_path, "another model", 1 << 20)
    shutil.copy(path, other.path_for([5, 6, 7]))  # a file under a name not its own
    assert other.load([5, 6, 7]) is None
    assert store.load([5, 6, 7]) is not None


def _save_many(directory: str, worker: int) -> None:
    store = PrefixStore(Path(directory), "model", max_bytes=6 * 600)
    for round_ in range(20):
        tokens = [round_ % 8, 1, 2, 3]
        store.save(tokens, *entry(tokens, fill=float(round_ % 8)))
        stored = store.load(tokens)  # a whole entry or none, never half or another's
        assert stored is None or bool((stored.keys == round_ % 8).all())


@pytest.mark.slow
def test_processes_sharing_the_store_leave_whole_entries_within_budget(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(str(tmp_path), n)) for n in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    store = PrefixStore(tmp_path, "model", max_bytes=6 * 600)
    names = store_files(tmp_path)
    assert names and not [name for name in names if name.endswith(".tmp")]
    assert sum((tmp_path / name).stat().st_size for name in names) <= store.max_bytes
    kept = [store.load([first, 1, 2, 3]) for first in range(8)]
    assert [first for first, stored in enumerate(kept) if stored is not None]
    for first, stored in enumerate(kept):
        assert stored is None or bool((stored.keys == first).all())


@pytest.mark.slow
def test_fresh_agent_runs_reuse_the_first_runs_system_prompt(
    tiny_trained_gptq: Path, tmp_path: Path
) -> None:
    """`run_finished` says how many prompt tokens a fresh process did not compute; the answer
    is the one computed from scratch; a changed system prompt is a new entry, not a reuse."""
    base = [
        "run", "--json", "--model", str(tiny_trained_gptq), "--seed", "1", "--tools",
        "calculator", "--mcp-config", str(empty_mcp_config(tmp_path)), "What is 6 times 7?",
    ]  # fmt: skip

    def run(*extra: str) -> tuple[int, list[dict]]:
        done = agent_cli(*base, *extra, home=tmp_path)
        assert done.returncode == 0, done.stderr
        events = json_events(done.stdout)
        shown = [
            {k: v for k, v in e.items() if k != "duration_s"}
            for e in events
            if e["type"] == "answer" or e["type"].startswith("tool")
        ]
        return events[-1]["usage"]["reused_prompt_tokens"], shown

    uncached, from_scratch = run("--disk-cache-mb", "0")
    first, first_shown = run()
    second, second_shown = run()
    # The second model call of a run reuses the first one's prompt in memory in any case.
    assert first == uncached and second > first
    assert second_shown == first_shown == from_scratch and from_scratch[-1]["text"]
    (tmp_path / "config.toml").write_text('system_prompt = "Answer in French."\n')
    changed, _ = run()
    assert changed == run("--disk-cache-mb", "0")[0]  # nothing came from disk
    assert len(store_files(tmp_path / "cache" / "prefixes")) == 2
