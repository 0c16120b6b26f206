"""The checkpoint's tokenizer and chat template without importing transformers.

Importing transformers' tokenizer machinery and building a `PreTrainedTokenizerFast` took
~3.9 s of a ~7.8 s cold start; the Rust `tokenizers` library loads the same `tokenizer.json` in
~0.6 s. The chat template is rendered the way transformers renders it (sandboxed Jinja with
trim_blocks/lstrip_blocks, its `tojson`, `raise_exception` and `strftime_now`); a test checks
prompts and token ids against transformers on the same checkpoint.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """transformers' `tojson`: no HTML escaping, json.dumps options exposed."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class FastTokenizer:
    """What the backend needs of a tokenizer: encode, decode, token ids, the chat template."""

    def __init__(self, tokenizer: Tokenizer, config: dict[str, Any], chat_template: str | None):
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self.eos_token = _token_text(config.get("eos_token"))
        self.eos_token_id = tokenizer.token_to_id(self.eos_token) if self.eos_token else None
        self._template_tokens = {
            name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "pad_token")
        }
        self._template: Any = None

    @classmethod
    def from_dir(cls, path: Path) -> FastTokenizer:
        """Load `tokenizer.json` and `tokenizer_config.json` (or `chat_template.jinja`)."""
        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        config_file = path / "tokenizer_config.json"
        config = {}
        if config_file.is_file():
            config = json.loads(config_file.read_text(encoding="utf-8"))
        template = config.get("chat_template")
        jinja_file = path / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text(encoding="utf-8")
        return cls(tokenizer, config, template if isinstance(template, str) else None)

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        """`{"input_ids": [...]}`, as a transformers tokenizer answers."""
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": list(encoding.ids)}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=skip_special_tokens))

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        """The vocabulary entries of `ids` (byte-level text for ordinary tokens)."""
        return [self._tokenizer.id_to_token(token) for token in ids]

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        """The prompt text (`tokenize=False` only, which is all the backend asks for)."""
        if tokenize:
            raise ValueError("FastTokenizer.apply_chat_template renders text only")
        if self.chat_template is None:
            raise ValueError("this tokenizer has no chat template")
        if self._template is None:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(self.chat_template)
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self._template_tokens,
                **kwargs,
            )
        )


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None
