"""`/tokenize` and `/detokenize` as llama-server and vLLM offer them: text (`content` or
`prompt`) or chat `messages` to token ids, and ids back to text."""

from __future__ import annotations

from typing import Any

from agent.config import CONTEXT_TOKENS
from agent.engine.loading import LoadedModel
from agent.server.errors import ApiError
from agent.server.fields import Body, check_model
from agent.server.logprobs import TokenTexts
from agent.server.protocol import Limits, chat_messages, chat_tools, thinking_enabled

TOKENIZE_FIELDS = frozenset({
    "model", "content", "prompt", "messages", "tools", "chat_template_kwargs",
    "add_generation_prompt", "add_special", "add_special_tokens", "with_pieces",
    "return_token_strs",
})  # fmt: skip
DETOKENIZE_FIELDS = frozenset({"model", "tokens"})


def _text(body: Body, loaded: LoadedModel, limits: Limits) -> str:
    text = body.get("content", body.get("prompt"))
    if body.get("messages") is not None:
        if text is not None:
            raise ApiError(400, "give messages or a text (content, prompt), not both", "messages")
        return str(loaded.tokenizer.apply_chat_template(
            chat_messages(body, limits), tools=chat_tools(body), tokenize=False,
            add_generation_prompt=body.flag("add_generation_prompt", True),
            enable_thinking=thinking_enabled(body),
        ))  # fmt: skip
    if not isinstance(text, str):
        raise ApiError(400, "give the text as content (or prompt), or give messages", "content")
    return text


def tokenize(raw: Any, loaded: LoadedModel, served: str, limits: Limits) -> dict[str, Any]:
    """`{"tokens", "count", "max_model_len"}` (and `token_strs` when asked for); with
    `with_pieces`, each token is `{"id", "piece"}` as llama-server gives it."""
    body = Body(raw, TOKENIZE_FIELDS)
    check_model(body, served)
    special = body.flag("add_special", body.flag("add_special_tokens", False))
    ids = list(
        loaded.tokenizer(_text(body, loaded, limits), add_special_tokens=special)["input_ids"]
    )
    texts = TokenTexts(loaded.tokenizer)
    tokens: list[Any] = ids
    if body.flag("with_pieces", False):
        tokens = [{"id": token, "piece": texts.text_of(token)} for token in ids]
    reply = {"tokens": tokens, "count": len(ids), "max_model_len": CONTEXT_TOKENS}
    if body.flag("return_token_strs", False):
        reply["token_strs"] = [texts.text_of(token) for token in ids]
    return reply


def detokenize(raw: Any, loaded: LoadedModel, served: str) -> dict[str, Any]:
    """The text of `tokens`, as `content` (llama-server's name) and `prompt` (vLLM's)."""
    body = Body(raw, DETOKENIZE_FIELDS)
    check_model(body, served)
    ids = body.get("tokens")
    vocab = loaded.engine.vocab_size
    if not isinstance(ids, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in ids
    ):
        raise ApiError(400, f"tokens must be a list of token ids below {vocab}", "tokens")
    text = loaded.tokenizer.decode(ids, skip_special_tokens=False)
    return {"content": text, "prompt": text}
