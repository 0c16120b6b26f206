"""The Qwen3 tokenizer rebuilt from `qwen.tiktoken` agrees with tiktoken on the same ranks."""

import json
from pathlib import Path

import pytest
import tiktoken
from transformers import PreTrainedTokenizerFast

from agent.testing import tokenizer as qwen_tokenizer
from agent.testing.tokenizer import ADDED_TOKENS, FIRST_ADDED_ID, load_ranks, recover_merges

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

TEXTS = {
    "english": "Hello, world! It's 9:30 and we're testing Qwen3's tokenizer... OK?\n",
    "chinese": "你好，世界！今天北京的天气怎么样？我们下午去公园散步吧。",
    "code": "def square(x: int) -> int:\n\treturn x ** 2  # 平方\n\n\nprint(square(12))\r\n",
    "emoji": "Emoji 😀👍🏽 🇯🇵 and a family 👨\u200d👩\u200d👧 — “quoted” café…",
    "whitespace": "  leading\n\n\n   trailing   \t\n",
    "numbers": "1234567890 3.14159 -1e-10 0x1F",
    "chat": '<|im_start|>user\n<tool_response>\n{"ok": true}\n</tool_response><|im_end|>\n',
}


@pytest.fixture(scope="module")
def encoding() -> tiktoken.Encoding:
    special = {text: FIRST_ADDED_ID + offset for offset, (text, _) in enumerate(ADDED_TOKENS)}
    return tiktoken.Encoding(
        "qwen3", pat_str=QWEN_PATTERN, mergeable_ranks=load_ranks(), special_tokens=special
    )


@pytest.mark.parametrize("name", TEXTS)
def test_ids_match_tiktoken_and_decode_back(
    name: str, qwen3_tokenizer: PreTrainedTokenizerFast, encoding: tiktoken.Encoding
) -> None:
    text = TEXTS[name]
    ids = qwen3_tokenizer.encode(text)
    assert ids == encoding.encode(text, allowed_special="all")
    assert qwen3_tokenizer.decode(ids) == text


def test_ids_match_tiktoken_on_source_files(
    qwen3_tokenizer: PreTrainedTokenizerFast, encoding: tiktoken.Encoding
) -> None:
    for path in sorted(Path(qwen_tokenizer.__file__).parent.glob("*.py")):
        text = path.read_text()
        assert qwen3_tokenizer.encode(text) == encoding.encode(text, allowed_special="all"), path


def test_added_tokens_have_their_official_ids_and_flags(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    decoder = qwen3_tokenizer.added_tokens_decoder
    for offset, (text, special) in enumerate(ADDED_TOKENS):
        token_id = FIRST_ADDED_ID + offset
        assert qwen3_tokenizer.encode(text) == [token_id]
        assert (decoder[token_id].content, decoder[token_id].special) == (text, special)
    ids = {text: qwen3_tokenizer.convert_tokens_to_ids(text) for text, _ in ADDED_TOKENS}
    assert ids["<|im_start|>"] == 151644 and ids["<|im_end|>"] == 151645
    assert (ids["<tool_call>"], ids["</tool_call>"]) == (151657, 151658)
    assert (ids["<tool_response>"], ids["</tool_response>"]) == (151665, 151666)
    assert (ids["<think>"], ids["</think>"]) == (151667, 151668)
    assert len(qwen3_tokenizer) == 151669


def test_eos_pad_and_skip_special_tokens(qwen3_tokenizer: PreTrainedTokenizerFast) -> None:
    assert (qwen3_tokenizer.eos_token, qwen3_tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (qwen3_tokenizer.pad_token, qwen3_tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert qwen3_tokenizer.bos_token is None and qwen3_tokenizer.unk_token is None
    ids = qwen3_tokenizer.encode("<|im_start|>assistant\n<think>\nhm\n</think>\n\nHi<|im_end|>")
    # <think> and <tool_call> are not special tokens: skip_special_tokens keeps them.
    assert (
        qwen3_tokenizer.decode(ids, skip_special_tokens=True)
        == "assistant\n<think>\nhm\n</think>\n\nHi"
    )


def test_pipeline_is_nfc_qwen_split_and_byte_level(
    qwen3_tokenizer: PreTrainedTokenizerFast,
) -> None:
    backend = qwen3_tokenizer.backend_tokenizer
    assert json.loads(backend.normalizer.__getstate__()) == {"type": "NFC"}
    split, byte_level = json.loads(backend.pre_tokenizer.__getstate__())["pretokenizers"]
    assert split["pattern"] == {"Regex": QWEN_PATTERN}
    assert (split["behavior"], split["invert"]) == ("Isolated", False)
    assert byte_level["type"] == "ByteLevel"
    assert (byte_level["add_prefix_space"], byte_level["use_regex"]) == (False, False)
    assert json.loads(backend.decoder.__getstate__())["type"] == "ByteLevel"


def test_every_multi_byte_token_is_one_merge() -> None:
    ranks = load_ranks()
    merges = recover_merges(ranks)
    assert len(ranks) == 151643
    assert len(merges) == len(ranks) - 256 == 151387
    assert all(ranks[a] < ranks[a + b] and ranks[b] < ranks[a + b] for a, b in merges)
