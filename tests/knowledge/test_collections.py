"""Who may delete a team's documents, collections, and an instance limited to some of
them: its retrieval never reaches the others, and another account's collections are
invisible. Documents are added through the service and indexed through the store
with small vectors (no model: the searches here run the full-text leg)."""

import io

import pytest
from conftest import indexed_document
from litestar.testing import TestClient
from signin_support import api_key

from appliance.accounts import service as accounts
from appliance.auth import service as auth
from appliance.chat import compose
from appliance.instances import service as instances
from appliance.knowledge import collections as kb_collections
from appliance.knowledge import service as knowledge
from appliance.knowledge.store import KnowledgeStore


def session_client(app, db, settings, clock, user, account):
    """A client signed in by session cookie (as the browser is), with the CSRF header."""
    token = auth.create_session(db, settings, user.id, account.id, clock())
    client = TestClient(app)
    client.cookies.set("session", token)
    client.cookies.set("csrf", "csrf-value")
    client.headers["X-CSRFToken"] = "csrf-value"
    return client


@pytest.fixture
def team(app, db, settings, clock):
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="Acme")
    member = accounts.ensure_user(db, "member@example.com", clock())
    accounts.add_member(db, account.id, member.id, "member", clock())
    stranger, elsewhere = accounts.create_user(
        db, "eve@example.org", clock(), account_name="Globex"
    )
    with TestClient(app) as lifespan:  # the app's startup work, once
        lifespan.get("/healthz")
        yield {
            "account": account,
            "owner": owner,
            "member": member,
            "elsewhere": elsewhere,
            "stranger": stranger,
            "as_owner": session_client(app, db, settings, clock, owner, account),
            "as_member": session_client(app, db, settings, clock, member, account),
            "as_stranger": session_client(app, db, settings, clock, stranger, elsewhere),
        }


def test_a_member_deletes_only_their_own_uploads(team, db, settings, clock):
    owners = indexed_document(
        db, settings, clock, team["account"], team["owner"], "plan.md", "owner plan"
    )
    mine = indexed_document(
        db, settings, clock, team["account"], team["member"], "notes.md", "member notes"
    )
    member = team["as_member"]
    listed = {d["filename"]: d for d in member.get("/api/documents").json()}
    assert listed["plan.md"]["uploader"] == "owner@example.com"
    assert listed["notes.md"]["uploader"] == "member@example.com"
    assert listed["plan.md"]["can_delete"] is False and listed["notes.md"]["can_delete"] is True
    refused = member.delete(f"/api/documents/{owners.id}")
    assert refused.status_code == 403
    assert "Only the person who uploaded" in refused.json()["error"]["message"]
    assert knowledge.document(db, team["account"].id, owners.id)  # still there
    assert member.delete(f"/api/documents/{mine.id}").status_code == 204
    # The page offers Remove only where it works, and names the uploader.
    page = member.get("/knowledge").text
    assert "owner@example.com" in page and f'data-delete="{owners.id}"' not in page
    # Owners (and admins) delete anyone's.
    assert team["as_owner"].delete(f"/api/documents/{owners.id}").status_code == 204
    assert team["as_owner"].get("/api/documents").json() == []


def test_collections_over_the_api(team, db, settings, clock):
    owner, member = team["as_owner"], team["as_member"]
    hr = owner.post("/api/collections", json={"name": "HR"})
    assert hr.status_code == 201, hr.text
    hr = hr.json()
    assert owner.post("/api/collections", json={"name": "HR"}).status_code == 409
    assert owner.post("/api/collections", json={"name": ""}).status_code == 400
    assert member.post("/api/collections", json={"name": "Mine"}).status_code == 403
    sales = owner.post("/api/collections", json={"name": "Sales"}).json()
    doc = indexed_document(db, settings, clock, team["account"], team["member"], "a.md", "alpha")
    other = indexed_document(db, settings, clock, team["account"], team["owner"], "b.md", "beta")
    filed = member.put(f"/api/documents/{doc.id}/collections", json={"collections": [hr["id"]]})
    assert filed.status_code == 200 and filed.json()["collections"] == [hr["id"]]
    # A member files only their own uploads; unknown ids are refused.
    assert (
        member.put(
            f"/api/documents/{other.id}/collections", json={"collections": [hr["id"]]}
        ).status_code
        == 403
    )
    bad = owner.put(f"/api/documents/{other.id}/collections", json={"collections": ["col_x"]})
    assert bad.status_code == 400
    owner.put(
        f"/api/documents/{other.id}/collections", json={"collections": [hr["id"], sales["id"]]}
    )
    counts = {c["name"]: c["documents"] for c in owner.get("/api/collections").json()}
    assert counts == {"HR": 2, "Sales": 1}
    renamed = owner.patch(f"/api/collections/{sales['id']}", json={"name": "Sales team"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Sales team"
    taken = owner.patch(f"/api/collections/{sales['id']}", json={"name": " HR "})
    assert taken.status_code == 409  # another collection's name
    same = owner.patch(f"/api/collections/{sales['id']}", json={"name": "Sales team"})
    assert same.status_code == 200  # its own name is no conflict
    assert owner.delete(f"/api/collections/{sales['id']}").status_code == 204
    assert [c["name"] for c in owner.get("/api/collections").json()] == ["HR"]
    assert len(owner.get("/api/documents").json()) == 2  # documents stay


def test_upload_into_a_collection(team, db):
    owner = team["as_owner"]
    hr = owner.post("/api/collections", json={"name": "HR"}).json()
    # No model is running: the ingestion task fails, the upload and its filing stand.
    response = owner.post(
        "/api/documents",
        files={"file": ("leave.md", io.BytesIO(b"# Leave\n\nTwenty days a year."))},
        data={"collection": hr["id"]},
    )
    assert response.status_code == 202, response.text
    (doc,) = owner.get("/api/documents").json()
    assert doc["collections"] == [hr["id"]]
    # The same content again is a duplicate: it stays in its collections (filing someone
    # else's upload is not the uploader's to do).
    sales = owner.post("/api/collections", json={"name": "Sales"}).json()
    again = team["as_member"].post(
        "/api/documents",
        files={"file": ("copy.md", io.BytesIO(b"# Leave\n\nTwenty days a year."))},
        data={"collection": sales["id"]},
    )
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert owner.get("/api/documents").json()[0]["collections"] == [hr["id"]]
    refused = owner.post(
        "/api/documents",
        files={"file": ("x.md", io.BytesIO(b"# X\n\nsomething"))},
        data={"collection": "col_nope"},
    )
    assert refused.status_code == 400


def test_an_instance_limited_to_a_collection_never_retrieves_another(team, db, settings, clock):
    account, owner = team["account"], team["owner"]
    hr = kb_collections.create(db, account.id, "owner", "HR", clock())
    sales = kb_collections.create(db, account.id, "owner", "Sales", clock())
    leave = indexed_document(
        db, settings, clock, account, owner, "leave.md", "holiday allowance is 25 days"
    )
    deals = indexed_document(
        db, settings, clock, account, owner, "deals.md", "holiday discount allowance 10%"
    )
    loose = indexed_document(
        db, settings, clock, account, owner, "misc.md", "holiday allowance rumours"
    )
    kb_collections.file_document(db, account.id, owner.id, "owner", leave.id, [hr.id])
    kb_collections.file_document(db, account.id, owner.id, "owner", deals.id, [sales.id])
    models = ["chat-model"]
    assistant = instances.create(
        db, account.id, "owner", {"name": "hr-bot", "collections": [hr.id]},
        models=models, max_tokens_cap=512, now=clock(),
    )  # fmt: skip
    everything = instances.create(
        db, account.id, "owner", {"name": "all"}, models=models, max_tokens_cap=512, now=clock()
    )
    assert everything.collections is None

    def cited(instance):
        passages = compose.retrieve(
            db, settings, None, account.id, "holiday allowance", 10, instance.collections
        )
        return {p.document_id for p in passages}

    assert cited(assistant) == {leave.id}
    assert cited(everything) == {leave.id, deals.id, loose.id}
    both = instances.update(
        db, account.id, "owner", assistant.id, {"collections": [hr.id, sales.id]},
        models=models, max_tokens_cap=512, now=clock(),
    )  # fmt: skip
    assert cited(both) == {leave.id, deals.id}
    # A deleted collection narrows the instance; it never widens it to everything.
    kb_collections.delete(db, account.id, "owner", hr.id)
    kb_collections.delete(db, account.id, "owner", sales.id)
    assert cited(instances.get(db, account.id, assistant.id)) == set()


def test_both_legs_search_inside_the_collections(team, db, settings, clock):
    """The filter is in each leg's query, not applied to its top hits afterwards: a
    collection's document is found even when many better matches lie outside it."""
    account, owner = team["account"], team["owner"]
    hr = kb_collections.create(db, account.id, "owner", "HR", clock())
    for n in range(45):  # each closer to the query, by words and by vector
        indexed_document(db, settings, clock, account, owner, f"promo{n}.md",
            f"holiday allowance holiday allowance offer {n}", (1.0, 0.0, 0.0, n / 100))  # fmt: skip
    text = "the holiday allowance is 25 days and more text here"
    leave = indexed_document(
        db, settings, clock, account, owner, "leave.md", text, (0.0, 1.0, 0.0, 0.0)
    )
    kb_collections.file_document(db, account.id, owner.id, "owner", leave.id, [hr.id])
    store = KnowledgeStore(db)
    match = '"holiday" OR "allowance"'
    assert leave.id not in {
        store.chunk_rows([c], account.id)[c]["document_id"]
        for c in store.bm25(account.id, match, 40)
    }
    (only,) = store.bm25(account.id, match, 40, [hr.id])
    (near,) = store.nearest(account.id, [1.0, 0.0, 0.0, 0.0], 10, [hr.id])
    assert only == near and store.chunk_rows([only], account.id)[only]["document_id"] == leave.id
    assert len(store.nearest(account.id, [1.0, 0.0, 0.0, 0.0], 10)) == 10
    assert store.nearest(account.id, [1.0, 0.0, 0.0, 0.0], 10, []) == []
    passages = compose.retrieve(db, settings, None, account.id, "holiday allowance", 5, [hr.id])
    assert [p.document_id for p in passages] == [leave.id]


def test_another_accounts_collections_are_invisible(team, db, settings, clock):
    theirs = team["as_stranger"].post("/api/collections", json={"name": "Secret"}).json()
    owner = team["as_owner"]
    assert owner.get("/api/collections").json() == []
    assert owner.patch(f"/api/collections/{theirs['id']}", json={"name": "x"}).status_code == 404
    assert owner.delete(f"/api/collections/{theirs['id']}").status_code == 404
    doc = indexed_document(db, settings, clock, team["account"], team["owner"], "a.md", "alpha")
    filed = owner.put(f"/api/documents/{doc.id}/collections", json={"collections": [theirs["id"]]})
    assert filed.status_code == 400
    chosen = owner.post("/api/instances", json={"name": "spy", "collections": [theirs["id"]]})
    assert chosen.status_code == 400
    searched = owner.get("/api/search", params={"q": "alpha", "collection": theirs["id"]})
    assert searched.status_code == 400


def test_instances_page_shows_the_collections_searched(team, db, clock):
    account = team["account"]
    hr = kb_collections.create(db, account.id, "owner", "HR", clock())
    instances.create(
        db, account.id, "owner", {"name": "hr-bot", "collections": [hr.id]},
        models=["chat-model"], max_tokens_cap=512, now=clock(),
    )  # fmt: skip
    page = team["as_owner"].get("/instances").text
    assert "from HR" in page
    assert f'name="collection:{hr.id}" value="on" checked' in page


def test_instance_settings_form_reads_the_collections_chosen():
    from appliance.web.instances import _form_changes

    form = {
        "name": "bot",
        "model": "m",
        "temperature": "0.7",
        "top_p": "0.9",
        "max_tokens": "64",
        "context_budget": "2048",
        "top_k": "5",
    }
    assert _form_changes(form)["collections"] is None
    chosen = {**form, "collections": "chosen", "collection:col_a": "on", "collection:col_b": "on"}
    assert _form_changes(chosen)["collections"] == ["col_a", "col_b"]
    assert _form_changes({**form, "collections": "chosen"})["collections"] == []
    assert _form_changes({**chosen, "collections": "all"})["collections"] is None


@pytest.mark.inference
def test_v1_on_an_instance_limited_to_a_collection_cites_only_it(
    linked_settings, models_dir, db, clock
):
    """End to end with the real models: ingestion, the instance's choice over the API, and
    the passages /v1 answered from."""
    from conftest import link_models

    from appliance.tasks import create_queue
    from appliance.web import create_app

    link_models(linked_settings, models_dir)
    app = create_app(
        linked_settings, clock=clock, queue=create_queue(linked_settings, immediate=True)
    )
    owner, account = accounts.create_user(db, "owner@example.com", clock(), account_name="A")
    manage = api_key(db, owner, account, "manage", clock())
    inference = api_key(db, owner, account, "inference", clock())
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {manage}"
        hr = client.post("/api/collections", json={"name": "HR"}).json()
        files = {
            "zephyr.md": b"# Project Zephyr\n\nThe launch code of Zephyr is PURPLE-OTTER-42.\n",
            "leave.md": b"# Leave\n\nThe launch code for annual leave requests is form L-7.\n",
        }
        for name, data in files.items():
            fields = {"collection": hr["id"]} if name == "leave.md" else {}
            sent = client.post(
                "/api/documents", files={"file": (name, io.BytesIO(data))}, data=fields
            )
            assert sent.status_code == 202, sent.text
        assert {d["status"] for d in client.get("/api/documents").json()} == {"ready"}
        for name, chosen in (("hr", [hr["id"]]), ("everything", None)):
            made = client.post(
                "/api/instances", json={"name": name, "max_tokens": 4, "collections": chosen}
            )
            assert made.status_code == 201, made.text
            assert made.json()["collections"] == chosen

        def cited(model):
            response = client.post(
                "/v1/chat/completions",
                json={
                    "model": model,
                    "messages": [{"role": "user", "content": "What is the launch code?"}],
                    "max_tokens": 4,
                },
                headers={"Authorization": f"Bearer {inference}"},
            )
            assert response.status_code == 200, response.text
            return {p["filename"] for p in response.json()["appliance"]["passages"]}

        assert cited("hr") == {"leave.md"}
        assert cited("everything") == {"leave.md", "zephyr.md"}
