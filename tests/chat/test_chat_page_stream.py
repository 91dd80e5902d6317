"""The Chat page's own routes: its stream carries each stored message drawn by the same
macro as the page (chat.js inserts it and draws none itself), and its reload is that
macro's HTML; the API's events stay as they are."""

import re

import pytest
from test_conversations import env, events, new_conversation  # noqa: F401 (env: a fixture)

pytestmark = pytest.mark.inference


def as_the_page(client):
    """The page's way: Litestar's CSRF cookie (signed), sent back in the header."""
    del client.headers["X-CSRFToken"]
    client.cookies.delete("csrf")
    client.get("/chat")
    client.headers["X-CSRFToken"] = client.cookies["csrf"]
    return client


def ask_page(client, cid, body):
    response = client.post(
        f"/chat/{cid}/ask", json=body, headers={"Accept": "text/event-stream, application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return events(response)


def test_the_page_stream_and_reload_carry_the_pages_own_articles(env):  # noqa: F811
    client = as_the_page(env["client"])
    cid = new_conversation(client, env["instance"]["id"])
    got = ask_page(client, cid, {"content": "Say <b>hi</b> to the team."})
    user, done = got[0], got[-1]
    assert [user["type"], got[1]["type"], done["type"]] == ["user", "status", "done"]
    # The question as text (escaped), the answer as the server's HTML with its actions.
    assert user["article"].startswith('<article class="msg msg-user"')
    assert "Say &lt;b&gt;hi&lt;/b&gt; to the team." in user["article"]
    assert "<b>" not in user["article"]
    assert 'data-edit="{}"'.format(user["message"]["id"]) in user["article"]
    assert done["article"].startswith('<article class="msg msg-assistant"')
    assert done["message"]["html"] in done["article"]
    assert "answer tokens" in done["article"] and "data-copy-message" in done["article"]
    # The reload is the same drawing, and the page itself draws them the same way.
    reload = client.get(f"/chat/{cid}/messages")
    assert reload.status_code == 200, reload.text
    assert reload.json() == {
        "id": cid,
        "title": "Say <b>hi</b> to the team.",
        "html": user["article"] + done["article"],
    }
    page = client.get(f"/chat/{cid}").text
    assert user["article"] in page and done["article"] in page

    # {} answers again: no question event; the reload shows the new answer's version.
    again = ask_page(client, cid, {})
    assert [e["type"] for e in again if e["type"] in ("user", "done")] == ["done"]
    html = client.get(f"/chat/{cid}/messages").json()["html"]
    assert '<span class="version-count">2/2</span>' in html
    assert again[-1]["message"]["id"] in html

    # {content, edit} asks a new version of the question.
    edited = ask_page(client, cid, {"content": "Name a colour.", "edit": user["message"]["id"]})
    assert "Name a colour." in edited[0]["article"]
    html = client.get(f"/chat/{cid}/messages").json()["html"]
    assert re.findall(r'data-role="(\w+)"', html) == ["user", "assistant"]
    assert "Name a colour." in html and "2/2" in html

    # The API's stream is unchanged: no drawing in its events.
    api = client.post(f"/api/conversations/{cid}/regenerate", json={})
    assert all("article" not in e for e in events(api))


def test_the_page_routes_refuse_like_the_api(env):  # noqa: F811
    client = as_the_page(env["client"])
    cid = new_conversation(client, env["instance"]["id"])
    # Refusals answer JSON with the status before anything streams.
    empty = client.post(
        f"/chat/{cid}/ask", json={"content": " "}, headers={"Accept": "application/json"}
    )
    assert empty.status_code == 400
    assert "Type a message first" in empty.json()["error"]["message"]
    nothing = client.post(f"/chat/{cid}/ask", json={}, headers={"Accept": "application/json"})
    assert nothing.status_code == 400
    missing = client.post("/chat/conv_nope/ask", json={"content": "Hi"})
    assert missing.status_code == 404
    assert client.get("/chat/conv_nope/messages").status_code == 404
