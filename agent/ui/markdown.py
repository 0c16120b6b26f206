"""Untrusted Markdown (answers, tool results quoted by the model) as HTML that stays text.

markdown-it renders with raw HTML off (a `<script>` in the text is shown as text) and images
off (an image would be a request the user did not ask for); nh3 (the Rust `ammonia`
sanitizer) then keeps only harmless tags and `http`, `https` and `mailto` links, so neither a
`javascript:` link nor a tag markdown-it let through can run in the page. The page's
Content-Security-Policy (agent/ui/guard.py) is the third line."""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}}
URL_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False})
    return parser.enable(["table", "strikethrough"]).disable("image")


def render_markdown(text: str) -> str:
    """`text` as sanitized HTML: no raw HTML, no images, only http(s) and mailto links."""
    html = _parser().render(text)
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    )
