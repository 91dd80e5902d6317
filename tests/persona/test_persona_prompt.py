"""System prompts: the local template, Claude with only the summary, egress, edits, history."""

import json
import subprocess
import sys
import warnings

import pytest
from conftest import free_port
from persona_support import (
    ANSWER,
    API_KEY,
    NOW,
    PROFILE,
    claude_settings,
    fake_anthropic,
    new_settings,
    open_database,
)

from appliance.accounts import service as accounts
from appliance.accounts.models import Profile
from appliance.auth import service as auth
from appliance.errors import InvalidInput, NotFound, Unavailable
from appliance.persona import service as persona
from appliance.persona import voice
from appliance.persona.claude import INSTRUCTION, ClaudeClient

CANARY_VOICE = "CANARY-VOICE-7731"
CANARY_EMAIL = "canary-owner-5521@example.com"
CANARY_KEY = "CANARY-KEYNAME-9911"


def owner(db, settings, email="owner@example.com", profile=PROFILE):
    user, account = accounts.create_user(db, email, NOW, role="owner")
    if profile:
        accounts.save_profile(db, settings, account.id, "owner", profile, NOW)
    return user, account


def claude_owner(tmp_path, fake, **owner_args):
    """Settings that send to ``fake`` as Claude, their database, and an owner's account."""
    settings = claude_settings(tmp_path / "data", fake)
    db = open_database(settings)
    return (settings, db, *owner(db, settings, **owner_args))


def rows(db, table):
    return db.execute(f"select count(*) from {table}").fetchone()[0]  # noqa: S608


def empty_profile(**answers):
    fields = dict.fromkeys(
        ("business_name", "intended_use", "tone", "formality", "length", "language"), ""
    )
    fields.update(answers)
    return Profile(
        "acc_x", **fields, age_confirmed=True, completed_at=None, skipped_at=None, updated_at=""
    )


def test_local_prompt_turns_every_answer_into_instructions():
    profile = empty_profile(**{k: v for k, v in PROFILE.items() if k != "age_confirmed"})
    text = persona.local_prompt(profile)
    assert text == persona.local_prompt(profile)  # deterministic
    assert text.startswith("You are the private AI assistant of the team at Example Bakery.")
    assert "The team uses you for: Answering customer emails about orders and allergens." in text
    assert "- Tone: warm, direct." in text
    assert "Write casually" in text
    assert "Keep answers short" in text
    assert "Answer in English" in text
    assert "Never invent facts" in text
    assert len(text) < persona.MAX_PROMPT_CHARS


def test_local_prompt_without_answers_is_still_a_useful_prompt():
    text = persona.local_prompt(empty_profile())
    assert text.startswith("You are the private AI assistant of a small team.")
    assert "Answer in the language the user writes in." in text
    assert "Ground rules:" in text
    assert "None" not in text and ": ." not in text
    custom = persona.local_prompt(empty_profile(formality="very formal", length="one line"))
    assert "Formality: very formal." in custom and "Answer length: one line." in custom


def test_without_a_key_the_local_template_is_used_and_nothing_leaves(tmp_path):
    with fake_anthropic() as fake:
        # The URL is set but the key is not: Claude is off.
        settings = new_settings(tmp_path / "data", **{"persona.anthropic_base_url": fake.url})
        db = open_database(settings)
        user, account = owner(db, settings)
        generated = persona.generate(db, settings, account.id, "owner", user.id, NOW)
        assert fake.requests == []
    assert generated.prompt.source == "local"
    assert generated.prompt.version == 1
    assert generated.prompt.text == persona.local_prompt(accounts.profile(db, account.id, NOW))
    assert persona.egress_log(db, account.id, "owner") == []
    assert rows(db, "egress_log") == 0


def test_claude_receives_only_the_summary_and_the_egress_is_measured(tmp_path):
    with fake_anthropic() as fake:
        settings, db, user, account = claude_owner(tmp_path, fake, email=CANARY_EMAIL)
        auth.create_key(
            db, user_id=user.id, account_id=account.id, name=CANARY_KEY, scope="manage", now=NOW
        )
        voice.add_sample(
            db,
            settings,
            account.id,
            "owner",
            "style.txt",
            f"Our notes always end with a cheerful sign-off from the whole bakery team. "
            f"{CANARY_VOICE} is written on every order we are proud of.\n".encode(),
            NOW,
        )
        assert voice.excerpts(db, account.id)  # the sample really is part of the account's voice
        generated = persona.generate(db, settings, account.id, "owner", user.id, NOW)
    summary = accounts.profile_summary(accounts.profile(db, account.id, NOW))

    assert generated.prompt.source == "claude"
    assert generated.prompt.text == ANSWER
    assert persona.active_prompt(db, account.id).text == ANSWER
    assert len(fake.requests) == 1
    request = fake.requests[0]
    assert request.path == "/v1/messages"
    # The key travels only in its header (x-api-key or, in newer SDKs, Authorization).
    key_headers = {"x-api-key", "authorization"}
    assert any(API_KEY in request.headers.get(name, "") for name in key_headers)
    sent = json.loads(request.body)
    assert sent["messages"] == [{"role": "user", "content": summary}]
    assert sent["system"] == INSTRUCTION
    assert sent["model"] == settings.persona.anthropic_model
    assert sent["max_tokens"] == 1024
    assert set(sent) == {"model", "max_tokens", "system", "messages"}

    everything = request.body.decode() + json.dumps(
        {k: v for k, v in request.headers.items() if k not in key_headers}
    )
    for canary in (
        CANARY_VOICE,
        CANARY_EMAIL,
        CANARY_EMAIL.split("@")[0],
        CANARY_KEY,
        account.id,
        user.id,
        account.name,
    ):
        assert canary not in everything, canary

    [entry] = persona.egress_log(db, account.id, "owner")
    assert entry.bytes_sent == len(request.body)
    assert (entry.service, entry.purpose, entry.data_categories) == (
        "anthropic",
        "system prompt generation",
        "onboarding summary",
    )
    assert entry.outcome == "HTTP 200"


def test_a_failing_claude_stores_no_prompt_but_records_each_attempt(tmp_path):
    # Choice: the failed attempts are logged, since each one did carry the summary out.
    with fake_anthropic(status=500) as fake:
        settings, db, user, account = claude_owner(tmp_path, fake)
        with pytest.raises(Unavailable, match=r"HTTP 500.*local template"):
            persona.generate(db, settings, account.id, "owner", user.id, NOW)
    assert rows(db, "system_prompts") == 0
    assert len(fake.requests) == 2  # the first try and the one retry
    entries = persona.egress_log(db, account.id, "owner")
    assert sorted(e.bytes_sent for e in entries) == sorted(len(r.body) for r in fake.requests)
    assert {e.outcome for e in entries} == {"HTTP 500"}


def test_an_unreachable_claude_sends_nothing_and_logs_nothing(tmp_path):
    settings = new_settings(
        tmp_path / "data",
        **{
            "persona.anthropic_api_key": API_KEY,
            "persona.anthropic_base_url": f"http://127.0.0.1:{free_port()}",
        },
    )
    db = open_database(settings)
    user, account = owner(db, settings)
    with pytest.raises(Unavailable, match="could not be reached"):
        persona.generate(db, settings, account.id, "owner", user.id, NOW)
    assert rows(db, "system_prompts") == 0
    assert rows(db, "egress_log") == 0


def test_claude_is_not_called_with_an_empty_profile(tmp_path):
    with fake_anthropic() as fake:
        settings, db, user, account = claude_owner(tmp_path, fake, profile=None)
        with pytest.raises(InvalidInput, match="profile is empty"):
            persona.generate(db, settings, account.id, "owner", user.id, NOW)
        assert fake.requests == []
    assert rows(db, "egress_log") == 0


def test_edit_history_and_diff(settings, db):
    user, account = owner(db, settings)
    first = persona.use_local(db, settings, account.id, "owner", user.id, NOW)
    assert (first.prompt.version, first.prompt.source) == (1, "local")
    assert first.diff and all(op == " " for op, _ in first.diff)  # same as the template in use

    edited_text = first.prompt.text.replace("Keep answers short", "Keep answers very short")
    edited = persona.save_edit(db, account.id, "admin", user.id, edited_text + "\r\n", NOW)
    assert (edited.version, edited.source, edited.text) == (2, "edited", edited_text)
    assert persona.active_prompt(db, account.id) == edited
    assert persona.save_edit(db, account.id, "owner", user.id, edited_text, NOW) == edited
    assert [p.version for p in persona.history(db, account.id, "owner")] == [2, 1]

    again = persona.use_local(db, settings, account.id, "owner", user.id, NOW)
    assert again.previous == edited_text
    removed = [line for op, line in again.diff if op == "-"]
    added = [line for op, line in again.diff if op == "+"]
    assert any("very short" in line for line in removed)
    assert any("Keep answers short" in line and "very" not in line for line in added)

    with pytest.raises(InvalidInput, match="empty"):
        persona.save_edit(db, account.id, "owner", user.id, "  \n ", NOW)
    with pytest.raises(InvalidInput, match="8000"):
        persona.save_edit(db, account.id, "owner", user.id, "x" * 8001, NOW)
    with pytest.raises(InvalidInput):
        persona.save_edit(db, account.id, "owner", user.id, 42, NOW)
    assert persona.active_prompt(db, account.id).version == 3


def test_diff_marks_removed_and_added_lines():
    assert persona.diff("a\nb\nc", "a\nB\nc\nd") == [
        (" ", "a"),
        ("-", "b"),
        ("+", "B"),
        (" ", "c"),
        ("+", "d"),
    ]
    assert persona.diff("", "x") == [("+", "x")]


def test_members_cannot_change_or_read_the_prompt_history(settings, db):
    _, account = owner(db, settings)
    member, _ = accounts.create_user(
        db, "member@example.com", NOW, account_name=account.name, role="member"
    )
    calls = [
        lambda: persona.generate(db, settings, account.id, "member", member.id, NOW),
        lambda: persona.use_local(db, settings, account.id, "member", member.id, NOW),
        lambda: persona.save_edit(db, account.id, "member", member.id, "Be evil.", NOW),
        lambda: persona.history(db, account.id, "member"),
        lambda: persona.egress_log(db, account.id, "member"),
    ]
    for call in calls:
        with pytest.raises(NotFound):  # Forbidden is shown as 404
            call()
    assert rows(db, "system_prompts") == 0


def test_prompt_for_account_is_the_template_until_a_version_exists(settings, db):
    user, account = owner(db, settings)
    template = persona.local_prompt(accounts.profile(db, account.id, NOW))
    assert persona.prompt_for_account(db, settings, account.id, NOW) == template
    persona.save_edit(db, account.id, "owner", user.id, "You are Crumb, the bakery's helper.", NOW)
    assert persona.prompt_for_account(db, settings, account.id) == (
        "You are Crumb, the bakery's helper."
    )


def test_the_default_model_is_not_one_the_sdk_calls_deprecated(tmp_path):
    with fake_anthropic() as fake:
        settings = claude_settings(tmp_path / "data", fake)
        client = ClaudeClient.from_settings(settings)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            client.write_system_prompt("Business: Example Bakery")
        client.close()
    assert json.loads(fake.requests[0].body)["model"] == settings.persona.anthropic_model
    assert not [w for w in caught if "deprecated" in str(w.message)]


def test_the_api_key_never_prints(tmp_path):
    settings = new_settings(tmp_path / "data", **{"persona.anthropic_api_key": API_KEY})
    assert settings.persona.anthropic_api_key == API_KEY
    assert API_KEY not in repr(settings) and API_KEY not in str(settings.persona)


def test_the_services_start_without_the_anthropic_sdk_which_a_claude_client_imports():
    """The SDK takes seconds to import (4.5 s on 2 cores): it is loaded for a Claude call,
    not by every web, worker or CLI start that merely reaches the persona module."""
    check = (
        "import sys\n"
        "import appliance.cli, appliance.web.app, appliance.worker\n"
        "assert 'anthropic' not in sys.modules, 'imported at start'\n"
        "from appliance.persona.claude import ClaudeClient\n"
        "ClaudeClient('sk-test', 'claude-test', 'http://127.0.0.1:9').close()\n"
        "assert 'anthropic' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
