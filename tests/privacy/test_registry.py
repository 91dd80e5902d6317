"""The privacy registry names every table that holds account or user data."""

from appliance.privacy.registry import (
    ACCOUNT_COLUMNS,
    DERIVED,
    ERASE,
    KEEP,
    PSEUDONYMIZE,
    TABLES,
    TOMBSTONE,
)


def tables_with_account_data(db) -> dict[str, set[str]]:
    """Every table (after all migrations) with a column that ties rows to an account or
    a person, with those columns. Shadow tables of FTS5 and vec0 have none."""
    found = {}
    for (name,) in db.execute("select name from sqlite_master where type = 'table'"):
        columns = {row[1] for row in db.execute(f"pragma table_info('{name}')")}
        if columns & ACCOUNT_COLUMNS:
            found[name] = columns & ACCOUNT_COLUMNS
    return found


def test_every_table_with_account_data_is_in_the_registry(db):
    from appliance.knowledge.store import KnowledgeStore

    KnowledgeStore(db).ensure_vectors(4, "test")  # the vector table exists once used
    registered = {t.name for t in TABLES}
    found = tables_with_account_data(db)
    missing = sorted(set(found) - registered)
    assert not missing, (
        f"tables with account data missing from appliance/privacy/registry.py: {missing} "
        "(say how rows are found for an account, whether they are exported, and whether "
        "deletion erases or pseudonymizes them)"
    )
    assert "chunk_vectors" in found and "messages" in found and "ledger_entries" in found


def test_registry_entries_are_well_formed(db):
    from appliance.privacy import erasure

    names = [t.name for t in TABLES]
    assert len(names) == len(set(names))
    for table in TABLES:
        assert table.on_delete in (ERASE, PSEUDONYMIZE, TOMBSTONE, DERIVED, KEEP), table
        assert table.account or table.user, table
        if table.eraser:
            assert callable(getattr(erasure, table.eraser)), table
        exists = db.execute(
            "select 1 from sqlite_master where name = ? and type = 'table'", [table.name]
        ).fetchone()
        if exists:
            # The conditions are valid SQL over the table's own columns.
            for condition in filter(None, (table.account, table.user)):
                db.execute(
                    f"select count(*) from {table.name} where {condition}",  # noqa: S608
                    {"account": "acc_x", "users": "[]"},
                ).fetchone()
