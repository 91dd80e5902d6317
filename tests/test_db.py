"""The database: pragmas, sqlite-vec, migrations, write transactions and the connections
the web keeps open between requests (``pooled``)."""

import os
import threading
import time

import pytest
from conftest import in_threads, make_settings
from sqlite_utils.utils import sqlite3

from appliance import db as database
from appliance.db import MIGRATION_MODULES, migration_set, open_db, pooled, write_transaction


def test_pragmas(db):
    assert db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert db.execute("pragma foreign_keys").fetchone()[0] == 1
    assert db.execute("pragma secure_delete").fetchone()[0] == 1
    assert db.execute("pragma busy_timeout").fetchone()[0] >= 5000
    assert db.execute("pragma mmap_size").fetchone()[0] == 1 << 30


def test_sqlite_vec_is_loaded_and_works(db):
    assert db.execute("select vec_version()").fetchone()[0].startswith("v")
    db.execute("create virtual table v using vec0(account text partition key, e float[3])")
    db.execute("insert into v(rowid, account, e) values (1, 'a', '[1,0,0]'), (2, 'b', '[0,1,0]')")
    rows = db.execute(
        "select rowid from v where e match '[0,1,0]' and k = 2 and account = 'a'"
    ).fetchall()
    assert rows == [(1,)]


#: Every migration landed so far, per set, in order. Databases record these names in
#: ``_sqlite_migrations``: a renamed or dropped one would run again, or never.
LANDED = {
    "firstrun": ["m001_create_setup_claims"],
    "heartbeat": ["m001_create_heartbeats"],
    "receipts": ["m001_create_deletion_receipts"],
    "accounts": ["m001_create_accounts", "m002_invite_choices"],
    "auth": ["m001_create_auth", "m002_admin_key_scope", "m003_sessions_before_an_account"],
    "knowledge": [
        "m001_create_documents",
        "m002_create_chunks_vocab",
        "m003_add_chunk_codes",
        "m004_create_collections",
    ],
    "persona": ["m001_create_persona"],
    "instances": ["m001_create_instances", "m002_add_collections"],
    "chat": ["m001_create_conversations", "m002_message_versions"],
    "privacy": ["m001_create_privacy", "m002_policy_text", "m003_policy_operator"],
    "billing": ["m001_create_billing", "m002_spend_months"],
}


def test_landed_migrations_keep_their_sets_names_and_order(db):
    assert list(MIGRATION_MODULES)[: len(LANDED)] == list(LANDED)
    for name in MIGRATION_MODULES:
        applied = [m.name for m in migration_set(name).applied(db)]
        assert applied[: len(LANDED.get(name, []))] == LANDED.get(name, []), name
        assert migration_set(name).pending(db) == [], name


def test_migrations_are_applied_once(settings, db):
    before = db.execute("select count(*) from _sqlite_migrations").fetchone()[0]
    again = open_db(settings)
    assert again.execute("select count(*) from _sqlite_migrations").fetchone()[0] == before
    again.close()


def test_write_transaction_rolls_back_on_error(db):
    db.execute("create table t (x integer)")
    with pytest.raises(RuntimeError), write_transaction(db):
        db.execute("insert into t values (1)")
        raise RuntimeError("boom")
    assert db.execute("select count(*) from t").fetchone()[0] == 0
    with write_transaction(db):
        db.execute("insert into t values (2)")
    assert db.execute("select x from t").fetchall() == [(2,)]


def test_concurrent_read_then_write_never_reports_locked(settings, db):
    """Eight connections increment one counter: no lost update, no 'database is locked'."""
    db.execute("create table counter (n integer)")
    db.execute("insert into counter values (0)")
    errors = []

    def bump() -> None:
        conn = open_db(settings)
        try:
            for _ in range(25):
                with write_transaction(conn):
                    n = conn.execute("select n from counter").fetchone()[0]
                    conn.execute("update counter set n = ?", [n + 1])
        except sqlite3.Error as exc:  # pragma: no cover - the failure we look for
            errors.append(exc)
        finally:
            conn.close()

    in_threads([bump] * 8)
    assert errors == []
    assert db.execute("select n from counter").fetchone()[0] == 200


def test_unopenable_database_is_a_clear_error(tmp_path):
    from appliance.config import Settings
    from appliance.errors import DatabaseError

    settings = Settings.load(data_dir=tmp_path, environ={})
    settings.paths.database.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(DatabaseError, match=r"appliance\.db"):
        open_db(settings)


@pytest.fixture
def counted(db):
    db.execute("create table t (x integer)")
    db.execute("insert into t values (1), (2), (3)")
    return db


def test_a_pooled_connection_is_kept_and_reads_the_newest_rows(settings, counted):
    with pooled(settings) as first:
        kept = first.conn
        cursor = first.execute("select x from t")
        assert cursor.fetchone() == (1,)  # a statement left unfinished...
        rows = first.query("select x from t")
        assert next(rows) == {"x": 1}  # ...and a generator not run to its end
    counted.execute("insert into t values (4)")  # another connection writes meanwhile
    with pooled(settings) as second:
        assert second.conn is kept
        assert second.execute("select count(*) from t").fetchone()[0] == 4


def test_a_pooled_database_stops_working_when_its_block_ends(settings):
    with pooled(settings) as db:
        cursor = db.execute("select 1 union all select 2")
    with pytest.raises(sqlite3.ProgrammingError, match="given back"):
        db.execute("select 1")
    with pytest.raises(sqlite3.ProgrammingError, match="closed cursor"):
        cursor.fetchall()


def test_an_open_transaction_or_a_database_error_closes_the_connection(settings, counted):
    with pooled(settings) as db:
        left_open = db.conn
        db.execute("begin immediate")
        db.execute("insert into t values (9)")
    with pytest.raises(sqlite3.OperationalError), pooled(settings) as db:
        failed = db.conn
        db.execute("select * from no_such_table")
    with pooled(settings) as db:
        assert db.conn not in (left_open, failed)
        # Rolled back and unlocked: this write does not wait out the busy timeout.
        with write_transaction(db):
            db.execute("insert into t values (5)")
        assert db.execute("select x from t order by x").fetchall() == [(1,), (2,), (3,), (5,)]


def test_the_pool_keeps_a_few_and_only_the_last_database(settings, tmp_path):
    blocks = [pooled(settings) for _ in range(database.POOL_KEEP + 3)]
    held = [block.__enter__() for block in blocks]
    assert len({db.conn for db in held}) == len(held)  # none shared while in use
    for block in blocks:
        block.__exit__(None, None, None)
    assert len(database._idle[str(settings.paths.database)]) == database.POOL_KEEP
    other = make_settings(tmp_path / "other")
    with pooled(other):
        pass
    assert list(database._idle) == [str(other.paths.database)]


def test_idle_pooled_connections_stop_no_wal_truncation(settings, counted):
    """Erasure ends with ``wal_checkpoint(TRUNCATE)`` (deleted pages leave the WAL): the
    connections the web keeps between requests must not hold it back."""
    blocks = [pooled(settings) for _ in range(3)]
    for block in blocks:
        db = block.__enter__()
        unfinished = db.execute("select x from t")
        assert unfinished.fetchone() == (1,)
    for block in blocks:
        block.__exit__(None, None, None)
    counted.execute("delete from t")
    busy, _, _ = counted.execute("pragma wal_checkpoint(truncate)").fetchone()
    assert busy == 0
    assert os.path.getsize(f"{settings.paths.database}-wal") == 0


def test_a_select_is_one_statement_and_other_queries_keep_the_guard(settings):
    with pooled(settings) as db:
        db.execute("create temp table t (n integer)")
        statements: list[str] = []
        db.conn.set_trace_callback(statements.append)
        db.execute("insert into t values (1), (2)")
        statements.clear()
        assert list(db.query("  SELECT n, n as n from t order by n")) == [
            {"n": 1, "n_2": 1},  # duplicate names as sqlite-utils gives them
            {"n": 2, "n_2": 2},
        ]
        assert list(db.query("select n from t where n = ?", [2])) == [{"n": 2}]
        assert statements == [
            "  SELECT n, n as n from t order by n",
            "select n from t where n = 2",
        ]
        # A statement that writes or may write still runs in sqlite-utils' savepoint.
        statements.clear()
        assert list(db.query("insert into t values (3) returning n")) == [{"n": 3}]
        assert any(s.startswith("SAVEPOINT") for s in statements)
        with pytest.raises(ValueError):
            db.query("delete from t")  # returns no rows: refused, and undone
        assert db.execute("select count(*) from t").fetchone()[0] == 3
        db.conn.set_trace_callback(None)


def test_writers_of_one_process_wait_their_turn_on_the_files_lock(settings):
    """A second write transaction waits on the file's lock and begins once the first has
    committed, rather than in SQLite's busy handler; past its busy timeout it fails as
    SQLite would."""
    held, events, errors = threading.Event(), [], []
    insert = "insert into heartbeats (service, host, pid, beat_at) values (?, 'h', 1, 'x')"
    with pooled(settings) as first, pooled(settings) as second:
        assert first.conn.write_lock is second.conn.write_lock
        second.conn.set_trace_callback(lambda sql: events.append(("second", sql)))

        def write() -> None:
            held.wait(5)
            try:
                with write_transaction(second):
                    second.execute(insert, ["b"])
            except sqlite3.OperationalError as exc:
                errors.append(str(exc))

        with write_transaction(first):
            first.execute(insert, ["a"])
            writer = threading.Thread(target=write)
            writer.start()
            held.set()
            time.sleep(0.3)  # the second has tried by now
            events.append(("first", "COMMIT"))
        writer.join(5)
        assert errors == []
        assert events.index(("first", "COMMIT")) < events.index(("second", "BEGIN IMMEDIATE"))
        second.conn.busy_timeout = 0.05
        held.clear()
        with write_transaction(first):
            writer = threading.Thread(target=write)
            writer.start()
            held.set()
            writer.join(5)
        assert errors == ["database is locked"]
        second.conn.set_trace_callback(None)
