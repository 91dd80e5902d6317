"""Privacy by registration: every table that holds account or user data is claimed by
exactly one part of ``appliance.personal``, of the domain that owns the table, and every
part implements the protocol."""

from collections import defaultdict

from test_architecture import creators, sources

from appliance import personal
from appliance.personal import ACCOUNT_COLUMNS, DERIVED, ERASE, KEEP, PSEUDONYMIZE, TOMBSTONE


def tables_with_account_data(db) -> dict[str, set[str]]:
    """Every table (after all migrations) with a column that ties rows to an account or
    a person, with those columns. Shadow tables of FTS5 and vec0 have none."""
    found = {}
    for (name,) in db.execute("select name from sqlite_master where type = 'table'"):
        columns = set(db[name].columns_dict)
        if columns & ACCOUNT_COLUMNS:
            found[name] = columns & ACCOUNT_COLUMNS
    return found


def domain_of(part) -> str:
    """``appliance.chat.personal`` → ``chat``; ``appliance.mail`` → ``mail``."""
    return part.__name__.split(".")[1]


def test_every_table_with_account_data_is_claimed_by_exactly_one_domain(db):
    from appliance.knowledge.store import KnowledgeStore

    KnowledgeStore(db).ensure_vectors(4, "test")  # the vector table exists once used
    claims = defaultdict(list)
    for part in personal.parts():
        for table in part.TABLES:
            claims[table.name].append(part.__name__)
    assert not {name: parts for name, parts in claims.items() if len(parts) > 1}
    found = tables_with_account_data(db)
    missing = sorted(set(found) - set(claims))
    assert not missing, (
        f"tables with account data that no domain claims: {missing} (in the owning "
        "domain's personal.py, say how rows are found for an account and a person, whether "
        "they are exported, and what deletion does with them; see appliance/personal.py)"
    )
    assert "chunk_vectors" in found and "messages" in found and "ledger_entries" in found


def test_a_domain_claims_only_the_tables_it_owns():
    owners = creators(sources())
    for part in personal.parts():
        for table in part.TABLES:
            assert owners[table.name] == {domain_of(part)}, (part.__name__, table.name)


def test_every_part_implements_the_protocol(db, settings):
    for part in personal.parts():
        assert callable(part.export) and callable(part.erase), part.__name__
        assert all(callable(job) for job in part.PURGES.values()), part.__name__
        for table in part.TABLES:
            assert table.on_delete in (ERASE, PSEUDONYMIZE, TOMBSTONE, DERIVED, KEEP), table
            assert table.account or table.user, table
            if db[table.name].exists():
                # The conditions are valid SQL over the table's own columns.
                for condition in filter(None, (table.account, table.user)):
                    params = {"account": "acc_x", "users": "[]", "emails": "[]"}
                    assert db[table.name].count_where(condition, params) == 0


def test_every_purge_has_a_unique_name():
    names = [name for part in personal.parts() for name in part.PURGES]
    assert len(names) == len(set(names))
