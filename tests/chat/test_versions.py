"""Message versions in the database: migration m002 turns the single line of existing
conversations into a tree without losing a message or its search index; a new version
becomes the current line and selecting the old one brings back what followed it."""

import sqlite_utils

from appliance.chat import service as chat
from appliance.chat.models import Message
from appliance.chat.store import ChatStore
from appliance.db import migration_set

NOW = "2026-11-27T09:00:00+00:00"


def message(conversation_id, id_, position, role, content, parent_id=None) -> Message:
    return Message(
        id_, conversation_id, position, role, content, None, 0, 0, 0, [], None, NOW, parent_id
    )


def test_existing_conversations_become_a_line_of_versions(tmp_path):
    db = sqlite_utils.Database(tmp_path / "old.db")  # chat's tables only: no foreign keys
    migrations = migration_set("chat")
    migrations.apply(db, stop_before="m002_message_versions")
    db["conversations"].insert(
        {
            "id": "conv_1",
            "account_id": "acc_1",
            "user_id": "usr_1",
            "instance_id": "ins_1",
            "title": "Old",
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    for position, (role, text) in enumerate(
        [("user", "Where is the kettle?"), ("assistant", "In the cupboard."), ("user", "Which?")]
    ):
        db["messages"].insert(
            {
                "id": f"msg_{position}",
                "conversation_id": "conv_1",
                "account_id": "acc_1",
                "position": position,
                "role": role,
                "content": text,
                "created_at": NOW,
            }
        )
    migrations.apply(db)

    store = ChatStore(db)
    line, versions = chat.current_line(store.messages("conv_1"))
    assert [(m.id, m.parent_id, m.selected) for m in line] == [
        ("msg_0", None, 1),
        ("msg_1", "msg_0", 1),
        ("msg_2", "msg_1", 1),
    ]
    assert versions == {}
    match = "select rowid from messages_fts where messages_fts match 'cupboard'"
    seq = db.execute("select seq from messages where id = 'msg_1'").fetchone()[0]
    assert [r[0] for r in db.execute(match)] == [seq]

    # A new version of the first answer: the line follows it, and the old answer keeps
    # the question that came after it.
    store.insert_message(
        "acc_1", message("conv_1", "msg_3", 1, "assistant", "On the shelf.", "msg_0")
    )
    line, versions = chat.current_line(store.messages("conv_1"))
    assert [m.id for m in line] == ["msg_0", "msg_3"]
    assert versions == {"msg_3": ["msg_1", "msg_3"]}
    store.select("conv_1", "msg_0", "msg_1")
    line, versions = chat.current_line(store.messages("conv_1"))
    assert [m.id for m in line] == ["msg_0", "msg_1", "msg_2"]
    assert versions == {"msg_1": ["msg_1", "msg_3"]}
    # The index follows new rows and deletions as before.
    assert [r[0] for r in db.execute(match.replace("cupboard", "shelf"))]
    db.execute("delete from messages where conversation_id = 'conv_1'")
    assert db.execute("select count(*) from messages").fetchone()[0] == 0
    assert not list(db.execute(match))
