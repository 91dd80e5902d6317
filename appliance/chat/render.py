"""Model output as safe HTML: Markdown with raw HTML off, no remote images, and citations.

The model writes whatever its input makes it write, including HTML and links planted in
a document it was shown. So: raw HTML is escaped (``html=False``), images become their
alt text (a remote image would tell a third party who read the answer), links keep
markdown-it's URL validation (no ``javascript:`` or ``data:``) and open with
``rel="noopener noreferrer nofollow"``, and code blocks get a copy button. ``[n]`` markers
become links to the cited passage.
"""

from __future__ import annotations

import re
from html import escape
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_inline import StateInline

MARKER = re.compile(r"\[(\d{1,3})\]")


def _citation_rule(state: StateInline, silent: bool) -> bool:
    if state.src[state.pos] != "[":
        return False
    match = MARKER.match(state.src, state.pos)
    if match is None or state.src[match.end() : match.end() + 1] == "(":
        return False
    if not silent:
        token = state.push("citation", "", 0)
        token.meta = {"n": int(match.group(1))}
    state.pos = match.end()
    return True


def _render_citation(self, tokens, idx, options, env) -> str:
    n = tokens[idx].meta["n"]
    source = env.get("sources", {}).get(n)
    if source is None:  # not retrieved (stored text is checked; this is belt and braces)
        return ""
    where = source["filename"] + (f", page {source['page']}" if source.get("page") else "")
    where += f", {source['heading']}" if source.get("heading") else ""
    text = env.get("texts", {}).get(source.get("chunk_id"))
    title = f"{where}: {text[:300]}" if text else where
    anchor = f"{env.get('prefix', 'src')}-{n}"
    return (
        f'<a class="cite" href="#{escape(anchor)}" data-source="{n}" '
        f'title="{escape(title)}">[{n}]</a>'
    )


def _render_image(self, tokens, idx, options, env) -> str:
    alt = self.renderInline(tokens[idx].children or [], options, env)
    return f'<span class="image-removed">{alt or "image"} (image not shown)</span>'


def _render_fence(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    info = token.info.strip().split(maxsplit=1)[0] if token.info.strip() else ""
    language = f' class="language-{escape(info)}"' if info else ""
    return (
        '<div class="code"><button type="button" class="copy" data-copy>Copy</button>'
        f"<pre><code{language}>{escape(token.content)}</code></pre></div>\n"
    )


def _build() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable("table").enable("strikethrough")
    md.inline.ruler.before("link", "citation", _citation_rule)
    md.add_render_rule("citation", _render_citation)
    md.add_render_rule("image", _render_image)
    md.add_render_rule("fence", _render_fence)
    md.add_render_rule("code_block", _render_fence)
    default_link_open = md.renderer.rules.get("link_open")

    def link_open(self, tokens, idx, options, env) -> str:
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        tokens[idx].attrSet("target", "_blank")
        if default_link_open is not None:
            return default_link_open(tokens, idx, options, env)
        return self.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


_MD = _build()


def render(
    text: str,
    sources: list[dict[str, Any]] | None = None,
    texts: dict[int, str] | None = None,
    *,
    prefix: str = "src",
) -> str:
    """``text`` as sanitized HTML; ``sources`` are the message's retrieved passages and
    ``texts`` their current text by chunk id (shown on hover)."""
    env = {
        "sources": {s["number"]: s for s in sources or []},
        "texts": texts or {},
        "prefix": prefix,
    }
    return _MD.render(text, env)
