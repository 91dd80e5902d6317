"""Model output as HTML: nothing the model writes can script the page or call out."""

import pytest

from appliance.chat.citations import check_citations
from appliance.chat.render import render

SOURCES = [
    {"number": 1, "filename": "zephyr.md", "page": 2, "heading": "Launch", "chunk_id": 7},
    {"number": 2, "filename": "notes.txt", "page": None, "heading": "", "chunk_id": 9},
]


@pytest.mark.parametrize(
    "markdown",
    [
        "<script>alert(1)</script>",
        '<img src="x" onerror="alert(1)">',
        "[click](javascript:alert(1))",
        "[click](JAVASCRIPT:alert(1))",
        "[data](data:text/html;base64,PHNjcmlwdD4=)",
        '<a href="https://evil.example">raw link</a>',
        "<iframe src='https://evil.example'></iframe>",
        "```\n</code></pre><script>alert(1)</script>\n```",
        '```"><script>alert(1)</script>\ncode\n```',
    ],
)
def test_no_raw_html_or_script_urls(markdown):
    html = render(markdown)
    assert "<script" not in html
    assert "<img" not in html
    assert "<iframe" not in html
    assert 'href="javascript' not in html.lower()
    assert 'href="data:' not in html
    assert "onerror=" not in html or "&lt;img" in html  # only ever as escaped text


def test_images_become_text_and_links_open_safely():
    html = render("![tracking pixel](https://evil.example/p.png) and [docs](https://example.org)")
    assert "<img" not in html and "evil.example" not in html
    assert "tracking pixel (image not shown)" in html
    assert (
        '<a href="https://example.org" rel="noopener noreferrer nofollow" target="_blank">' in html
    )


def test_code_blocks_get_a_copy_button_and_stay_escaped():
    html = render("```python\nprint('<b>hi</b>')\n```")
    assert 'class="copy" data-copy' in html
    assert '<code class="language-python">' in html
    assert "&lt;b&gt;hi&lt;/b&gt;" in html


def test_markdown_basics_render():
    html = render("# Title\n\n**bold** and `code`\n\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "<h1>Title</h1>" in html and "<strong>bold</strong>" in html
    assert "<code>code</code>" in html and "<table>" in html


def test_citations_link_to_their_passage_with_the_text_on_hover():
    html = render(
        "It is PURPLE [1].", SOURCES, {7: "The code is PURPLE-OTTER-42."}, prefix="m1-src"
    )
    assert '<a class="cite" href="#m1-src-1" data-source="1"' in html
    assert 'title="zephyr.md, page 2, Launch: The code is PURPLE-OTTER-42."' in html
    # A marker with no retrieved passage renders as nothing; a link [1](url) stays a link.
    assert "[5]" not in render("Made up [5].", SOURCES)
    assert 'href="https://x.example"' in render("[1](https://x.example)", SOURCES)


def test_check_citations_drops_numbers_that_were_not_retrieved():
    text, cited = check_citations("A [1]. B [3]. C [2, 7]. D [9, 8].", {1, 2})
    assert text == "A [1]. B. C [2]. D."
    assert cited == [1, 2]
    assert check_citations("See [1](https://x.example).", {2}) == (
        "See [1](https://x.example).",
        [],
    )
    assert check_citations("No markers.", set()) == ("No markers.", [])
