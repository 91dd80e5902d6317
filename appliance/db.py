"""The database: ``open_db(settings)`` is the only way to get a connection; the web takes
them through ``pooled(settings)``, which keeps a few open between requests.

Every connection runs in WAL mode with foreign keys on, a busy timeout of at least five
seconds and ``secure_delete`` (deleted content is overwritten, not left in free pages),
has sqlite-vec loaded, and sees a schema with every domain's migrations applied.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import re
import threading
import weakref
from collections.abc import Iterator

import sqlite_utils
from sqlite_utils.utils import (
    dedupe_keys,
    sqlite3,  # pysqlite3 when installed, else the stdlib module
)

from appliance.config import Settings
from appliance.errors import DatabaseError

#: Each domain's migration set (its name in ``_sqlite_migrations``) and the module that
#: holds its migrations, applied in this order. Named as strings so that ``db`` does not
#: import the domains.
MIGRATION_MODULES = {
    "firstrun": "appliance.firstrun",
    "heartbeat": "appliance.heartbeat",
    "receipts": "appliance.receipts",
    "accounts": "appliance.accounts.migrations",
    "auth": "appliance.auth.migrations",
    "knowledge": "appliance.knowledge.migrations",
    "persona": "appliance.persona.migrations",
    "instances": "appliance.instances.migrations",
    "chat": "appliance.chat.migrations",
    "privacy": "appliance.privacy.migrations",
    "billing": "appliance.billing.migrations",
}
#: A migration is a module-level function ``mNNN_what(db)``; the number orders them.
MIGRATION_NAME = re.compile(r"m\d{3}_\w+")

_migrated: set[str] = set()
MMAP_BYTES = 1 << 30
#: Idle connections ``pooled`` keeps for the next request.
POOL_KEEP = 8
#: ``pooled``'s idle connections: one database's, by its path (a process serves one).
_idle: dict[str, list[sqlite3.Connection]] = {}
_idle_lock = threading.Lock()
#: One lock per database file: ``write_transaction``s of this process wait their turn on
#: it, not in SQLite's busy handler, which sleeps 1, 2, 5, 10, … ms between tries.
_write_locks: dict[str, threading.RLock] = {}


def open_db(settings: Settings, *, migrate: bool = True) -> sqlite_utils.Database:
    """Open the appliance database with the pragmas, sqlite-vec and migrations applied.

    Raises:
        DatabaseError: the file cannot be opened or sqlite-vec cannot be loaded.
    """
    path = settings.paths.database
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from None
    db = open_reader(str(path), settings.database.busy_timeout_ms)
    if migrate:
        with _closed_on_error(db, path):
            apply_migrations(db, settings)
    return db


@contextlib.contextmanager
def _closed_on_error(
    connection: sqlite3.Connection | sqlite_utils.Database, path
) -> Iterator[None]:
    """Close ``connection`` when the block fails; SQLite's errors become ``DatabaseError``."""
    try:
        yield
    except sqlite3.Error as exc:
        connection.close()
        raise DatabaseError(f"cannot prepare database {path}: {exc}") from None
    except BaseException:
        connection.close()
        raise


def open_reader(path: str, busy_timeout_ms: int = 5000) -> sqlite_utils.Database:
    """A connection with the pragmas and sqlite-vec, not migrated: ``open_db``'s, or a second
    one to an already opened and migrated database file (for a search leg that runs on
    another thread while the first connection is busy; it never writes through it)."""
    try:
        # isolation_level=None: no implicit transactions; writes use db.atomic() or
        # write_transaction() so each one is exactly one explicit transaction.
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=busy_timeout_ms / 1000,
            factory=Connection,
        )
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseError(f"cannot open database {path}: {exc}") from None
    with _closed_on_error(conn, path):
        load_vec(conn)
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA secure_delete = ON")
        # Reads through mmap instead of the page cache: sqlite-vec's brute-force KNN scans
        # every vector blob (49 → 29 ms at 100k chunks, docs/benchmarks.md).
        conn.execute(f"PRAGMA mmap_size = {MMAP_BYTES}")
    return Database(conn)


#: A statement that only reads (``Database.query`` runs it without a savepoint).
_SELECT = re.compile(r"\s*select\b", re.IGNORECASE)


class Database(sqlite_utils.Database):
    """sqlite-utils' ``Database``, whose reads take one statement rather than three.

    Its ``query`` runs every statement inside a savepoint, so that one that turns out to
    return no rows can be undone before it says so; a ``select`` changes nothing, so it
    runs as it is (the web makes a few dozen reads a request, ~16 µs each saved).
    """

    def query(self, sql: str, params=None):
        if not _SELECT.match(sql):
            return super().query(sql, params)
        cursor = self.conn.execute(sql, *(() if params is None else (params,)))
        keys = dedupe_keys(column[0] for column in cursor.description)
        return (dict(zip(keys, row, strict=True)) for row in cursor)


class Connection(sqlite3.Connection):
    """A connection that knows its cursors, so that a finished block can end its statements:
    one left unfinished (a cursor not read to its end, still referenced) keeps its read
    snapshot, and a connection reused with it would read old rows. It also knows its
    file's ``write_lock`` (``write_transaction``)."""

    def __init__(self, database, *args, **kwargs) -> None:
        super().__init__(database, *args, **kwargs)
        self._cursors: weakref.WeakSet = weakref.WeakSet()
        self.busy_timeout = float(kwargs.get("timeout", 5.0))
        with _idle_lock:
            self.write_lock = _write_locks.setdefault(str(database), threading.RLock())

    def cursor(self, *args, **kwargs) -> sqlite3.Cursor:
        cursor = super().cursor(*args, **kwargs)
        self._cursors.add(cursor)
        return cursor

    def execute(self, *args) -> sqlite3.Cursor:
        return self.cursor().execute(*args)

    def executemany(self, *args) -> sqlite3.Cursor:
        return self.cursor().executemany(*args)

    def end_statements(self) -> None:
        """Close every cursor still open: their statements end, and any use of them fails."""
        for cursor in list(self._cursors):
            cursor.close()


@contextlib.contextmanager
def pooled(database: Settings | str) -> Iterator[sqlite_utils.Database]:
    """A connection to ``database`` for the block, kept open afterwards for the next block
    (up to ``POOL_KEEP``): the web answers every request on one, and opening one costs
    ~1.7 ms, most of it SQLite parsing the schema on its first statement. ``database`` is
    the settings (opened as ``open_db`` opens it), or the path of a file already opened
    that way (a search's vector leg, on a thread of its own).

    Given back clean or not at all: a block that leaves a transaction open, or fails with a
    database error, closes its connection. When the block ends, the ``Database`` handed out
    and every cursor it opened stop working, as a closed connection's would: nothing can go
    on using a connection that another request has by then, and no unfinished statement
    keeps an old snapshot. So each block reads the newest rows, and an idle connection
    stops no checkpoint (erasure's ``wal_checkpoint(TRUNCATE)``).
    """
    key = database if isinstance(database, str) else str(database.paths.database)
    with _idle_lock:
        for other in [path for path in _idle if path != key]:
            for conn in _idle.pop(other):  # another data dir's (tests switch between many)
                conn.close()
        idle = _idle.get(key)
        conn = idle.pop() if idle else None
    if conn is None:
        conn = (open_reader(key) if isinstance(database, str) else open_db(database)).conn
    # A new wrapper per block (the old one is cut off below); what sqlite-utils prepares on
    # a connection (recursive triggers, its plugins) was done when it was opened.
    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    failed = False
    try:
        yield db
    except sqlite3.Error:
        failed = True
        raise
    finally:
        db.conn = _RELEASED  # type: ignore[assignment]
        conn.end_statements()
        reusable = not failed and not conn.in_transaction
        with _idle_lock:
            idle = _idle.setdefault(key, [])
            if reusable and len(idle) < POOL_KEEP:
                idle.append(conn)
                conn = None
        if conn is not None:
            conn.close()  # an open transaction rolls back


class _Released:
    """What a ``pooled`` block's ``Database`` holds once the block has ended."""

    def __getattr__(self, name: str):
        raise sqlite3.ProgrammingError("Cannot operate on a connection given back to the pool.")


_RELEASED = _Released()


def load_vec(conn: sqlite3.Connection) -> str:
    """Load sqlite-vec into ``conn``; returns its version.

    Raises:
        DatabaseError: with the reason and the fix.
    """
    try:
        import sqlite_vec

        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        return conn.execute("select vec_version()").fetchone()[0]
    except AttributeError:
        raise DatabaseError(
            "this Python's sqlite3 cannot load extensions, so sqlite-vec cannot be loaded: "
            "install pysqlite3-binary (pip install pysqlite3-binary)"
        ) from None
    except (ImportError, sqlite3.Error) as exc:
        raise DatabaseError(f"sqlite-vec could not be loaded: {exc}") from None


def apply_migrations(db: sqlite_utils.Database, settings: Settings) -> None:
    """Apply every domain's pending migrations, one process at a time."""
    key = str(settings.paths.database)
    if key in _migrated:
        return
    lock_path = settings.paths.data_dir / ".migrations.lock"
    # Web, worker and CLI may start together: a file lock keeps two of them from
    # creating the same table at once.
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            for name in MIGRATION_MODULES:
                migration_set(name).apply(db)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _migrated.add(key)


def migration_set(name: str) -> sqlite_utils.Migrations:
    """Domain ``name``'s migrations as a ``sqlite_utils.Migrations`` set: the functions of
    its module (``MIGRATION_MODULES``) named ``mNNN_…``, in number order."""
    module = importlib.import_module(MIGRATION_MODULES[name])
    steps = sqlite_utils.Migrations(name)
    for attribute in sorted(vars(module)):
        if MIGRATION_NAME.fullmatch(attribute):
            steps(name=attribute)(getattr(module, attribute))
    return steps


@contextlib.contextmanager
def write_transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: for read-then-write sections other processes share.

    Taking the write lock up front means two processes can never both read a value and
    then both write based on it; the second waits (busy timeout) instead. Within this
    process, writers first queue on the file's ``write_lock``: eight requests holding
    credit at once then wait ~0.2 ms each, not SQLite's sleeps (in a scratch test of 8
    threads writing, p99 20 → 6 ms). Nested use (one service calling another inside its
    transaction) becomes a savepoint.
    """
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    conn = db.conn
    lock = getattr(conn, "write_lock", None)
    if lock is not None and not lock.acquire(timeout=conn.busy_timeout):
        raise sqlite3.OperationalError("database is locked")
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")
    finally:
        if lock is not None:
            lock.release()


def integrity_check(db: sqlite_utils.Database) -> str:
    """``ok`` or the first problem SQLite reports."""
    return db.execute("PRAGMA quick_check").fetchone()[0]
