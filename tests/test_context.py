"""Keeping a conversation inside the context window: the oldest turns go first."""

from agent.config import CONTEXT_TOKENS
from agent.loop.context import count_tokens, message_tokens, trim_turns


def turn(text: str) -> list[dict]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


def test_the_oldest_turns_are_dropped_and_the_current_one_kept() -> None:
    big = "word " * 6_000  # about 6,000 tokens a turn
    assert 5_000 < count_tokens(big) < 7_000
    old = [*turn("first " + big), *turn("second " + big), *turn("third " + big)]
    current = {"role": "user", "content": "and now?"}
    reserve = CONTEXT_TOKENS - 7_000  # room for one big turn and the question
    kept, dropped = trim_turns([*old, current], reserve)
    assert dropped == 2
    assert kept[0]["content"].startswith("third ") and kept[-1] == current
    assert sum(message_tokens(m) for m in kept) + reserve <= CONTEXT_TOKENS


def test_nothing_is_dropped_when_it_fits_and_the_current_turn_never() -> None:
    messages = [*turn("hello"), {"role": "user", "content": "again"}]
    assert trim_turns(messages, 1_000) == (messages, 0)
    huge = {"role": "user", "content": "word " * 40_000}
    assert trim_turns([*turn("hello"), huge], 1_000) == ([huge], 1)
