"""Does a checkpoint, loaded by our local backend, say exactly what a transcript scripts?"""

from __future__ import annotations

import random
from pathlib import Path

from agent.engine.generate import Usage, generate_token_ids
from agent.engine.loading import LoadedModel, load_local_model
from agent.engine.sampling import SamplingParams
from agent.testing.transcripts import (
    LOCAL_TIMEZONES,
    TASKS,
    Example,
    Transcript,
    encode_transcript,
)

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0)
HELD_OUT_SEED = 20_261_129  # training draws from other seeds


def greedy_reproduces(loaded: LoadedModel, example: Example) -> bool:
    """Whether greedy decoding from the prompt gives exactly the target (and then stops)."""
    expected = list(example.target[:-1])  # generation stops at <|im_end|> without yielding it
    # One token of room past the target: a model that does not stop there fails.
    output = generate_token_ids(loaded, list(example.prompt), GREEDY, len(expected) + 1, 0, Usage())
    return list(output) == expected


def held_out_runs(per_kind: int, seed: int = HELD_OUT_SEED) -> list[tuple[str, Transcript]]:
    """`per_kind` transcripts of every kind (every other one thinking), with values drawn
    apart from training's, each with a local time zone for its tool schemas."""
    rng = random.Random(seed)
    return [
        (rng.choice(LOCAL_TIMEZONES), task(rng, i % 2 == 1))
        for task in TASKS.values()
        for i in range(per_kind)
    ]


def reproduction_counts(
    model_dir: Path, runs: list[tuple[str, Transcript]]
) -> dict[str, list[int]]:
    """Per kind: [transcripts reproduced exactly (every model call), transcripts]."""
    loaded = load_local_model(str(model_dir), device="cpu")
    counts: dict[str, list[int]] = {}
    for zone, transcript in runs:
        examples = encode_transcript(transcript, loaded.tokenizer, zone)
        right = all(greedy_reproduces(loaded, example) for example in examples)
        tally = counts.setdefault(transcript.kind, [0, 0])
        tally[0] += right
        tally[1] += 1
    return counts


def total(counts: dict[str, list[int]]) -> tuple[int, int]:
    """Reproduced and all, over every kind."""
    return sum(c[0] for c in counts.values()), sum(c[1] for c in counts.values())
