"""The Qwen3 tokenizer, rebuilt from the BPE ranks that Qwen-Agent ships (`qwen.tiktoken`).

Ids equal the tiktoken ranks; each multi-byte token gets one merge, found by running BPE on its
bytes with lower-ranked tokens only; the Qwen3 added tokens follow at their official ids.
"""

import binascii
import functools
import importlib.util
from pathlib import Path

from tokenizers import AddedToken
from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast  # type: ignore[attr-defined]

from agent.testing.chat_template import QWEN3_CHAT_TEMPLATE

ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)
"""Qwen3's added tokens in id order, with their `special` flag, as in its tokenizer_config.json."""

FIRST_ADDED_ID = 151643
"""Id of `<|endoftext|>`, the first added token: the BPE vocabulary holds ids 0..151642."""

_NO_RANK = 1 << 62


def qwen_tiktoken_path() -> Path:
    """The BPE ranks file inside the installed Qwen-Agent package (found without importing it)."""
    spec = importlib.util.find_spec("qwen_agent")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("qwen-agent is not installed: it ships the Qwen BPE ranks")
    return Path(spec.submodule_search_locations[0]) / "utils" / "qwen.tiktoken"


def load_ranks(path: Path | None = None) -> dict[bytes, int]:
    """Token bytes to rank, from a tiktoken file (one `base64 rank` pair per line)."""
    lines = (path or qwen_tiktoken_path()).read_bytes().splitlines()
    return {
        binascii.a2b_base64(token): int(rank) for token, rank in (line.split() for line in lines)
    }


def recover_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The BPE merges, in priority order, that rebuild every multi-byte token from its bytes."""
    tokens = sorted(ranks, key=ranks.__getitem__)
    return [_last_merge(token, ranks) for token in tokens if len(token) > 1]


def _last_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge makes `token`: BPE on its bytes using only lower-ranked tokens."""
    rank, get = ranks[token], ranks.get
    splits = [
        i
        for i in range(1, len(token))
        if get(token[:i], _NO_RANK) < rank and get(token[i:], _NO_RANK) < rank
    ]
    if len(splits) == 1:  # Most tokens: only one split into two older tokens, no BPE needed.
        return token[: splits[0]], token[splits[0] :]
    parts = _bpe(token, rank, ranks)
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {rank}) is not one merge of lower-ranked tokens")
    return parts[0], parts[1]


def _bpe(token: bytes, max_rank: int, ranks: dict[bytes, int]) -> list[bytes]:
    """Byte-pair encode `token`, applying only merges whose result ranks below `max_rank`."""
    parts = [token[i : i + 1] for i in range(len(token))]
    pair_ranks = [ranks.get(a + b, _NO_RANK) for a, b in zip(parts, parts[1:], strict=False)]
    while pair_ranks and (best := min(pair_ranks)) < max_rank:
        i = pair_ranks.index(best)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]
        if i > 0:
            pair_ranks[i - 1] = ranks.get(parts[i - 1] + parts[i], _NO_RANK)
        if i < len(pair_ranks):
            pair_ranks[i] = ranks.get(parts[i] + parts[i + 1], _NO_RANK)
    return parts


@functools.cache
def _byte_level_table() -> list[str]:
    """GPT-2's byte-to-unicode mapping, indexed by byte (a `str.translate` table for latin-1)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    shifted = (b for b in range(256) if b not in printable)
    table = {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(shifted)}
    return [table[b] for b in range(256)]


def _byte_level(token: bytes) -> str:
    return token.decode("latin-1").translate(_byte_level_table())


def byte_level_vocab_and_merges(
    ranks: dict[bytes, int] | None = None,
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (byte-level text to id, ids = ranks) and merges for `ranks`."""
    ranks = ranks if ranks is not None else load_ranks()
    text = {token: _byte_level(token) for token in ranks}
    vocab = {text[token]: rank for token, rank in ranks.items()}
    return vocab, [(text[a], text[b]) for a, b in recover_merges(ranks)]


def build_qwen3_tokenizer() -> PreTrainedTokenizerFast:
    """A Qwen3 tokenizer like the official one: same ids, special tokens and chat template.

    transformers' `Qwen2Tokenizer` (the class Qwen3 checkpoints name) supplies the pipeline
    around our vocabulary and merges: NFC, the Qwen split regex, byte-level BPE and decoding.
    """
    vocab, merges = byte_level_vocab_and_merges()
    added = {
        FIRST_ADDED_ID + offset: AddedToken(text, special=special, normalized=False)
        for offset, (text, special) in enumerate(ADDED_TOKENS)
    }
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=merges,
        added_tokens_decoder=added,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[text for text, special in ADDED_TOKENS[1:] if special],
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        errors="replace",
        split_special_tokens=False,
        model_max_length=131072,
        chat_template=QWEN3_CHAT_TEMPLATE,
    )
    _check_added_ids(tokenizer)
    return tokenizer


def _check_added_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    for offset, (text, _) in enumerate(ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(text) != FIRST_ADDED_ID + offset:
            raise RuntimeError(f"{text} did not get id {FIRST_ADDED_ID + offset}")
