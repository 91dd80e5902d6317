"""The database: pragmas, sqlite-vec, migrations and write transactions."""

import importlib

import pytest
from conftest import in_threads
from sqlite_utils.utils import sqlite3

from appliance.db import MIGRATION_MODULES, open_db, write_transaction


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


def test_migrations_are_applied_once(settings, db):
    applied = db.execute(
        "select migration_set, count(*) from _sqlite_migrations group by migration_set"
    ).fetchall()
    sets = {name for name, _ in applied}
    expected = {importlib.import_module(m).migrations.name for m in MIGRATION_MODULES}
    assert expected <= sets
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
