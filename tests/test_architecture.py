"""The architecture as a check (docs/architecture.md).

- The import contracts in pyproject.toml's ``[tool.importlinter]``: entry points above web
  above the domains above the core, no cycles between packages, domains never import
  Litestar or the web layer, ``inference`` imports no domain and no database.
- Table ownership: every table is created by exactly one domain, and no module outside
  that domain names it in SQL (string literals and f-strings, read with ``ast``) or through
  sqlite-utils (``db["name"]``, ``db.table("name")``). Another domain's rows are reached
  through that domain's service.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from appliance.db import open_db

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "appliance"

#: Modules that may put a variable table name into SQL, and why.
DYNAMIC_TABLES = {
    "appliance/personal.py": "the batched delete a domain calls for its own tables",
    "appliance/ops/backup.py": "a backup's check counts the rows of every table in the copy",
}

_SQL = re.compile(r"\b(select|insert|update|delete|create|alter|drop|with|replace)\b", re.I)
_CREATE = re.compile(
    r"\bcreate\s+(?:virtual\s+)?table\s+(?:if\s+not\s+exists\s+)?[\"'\[]?(\w+)", re.I
)
_NAMED = r"\b(?:from|join|into|update|table|exists)\s+[\"'\[]?{}\b"
_DYNAMIC = re.compile(r"\b(?:from|join|into|update)\s+[\"'\[]?\x00", re.I)


def domain_of(path: Path) -> str:
    """``appliance/chat/service.py`` → ``chat``; ``appliance/mail.py`` → ``mail``."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else path.stem


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def _constants(tree: ast.Module) -> dict[str, str]:
    """The module's ``NAME = "text"`` constants (table names kept in one place)."""
    return {
        node.targets[0].id: node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }


def _text(node: ast.AST, constants: dict[str, str]) -> str | None:
    """A string literal's text; an f-string's with module constants filled in and any
    other ``{…}`` as NUL."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(value.value)
            elif isinstance(value.value, ast.Name) and value.value.id in constants:
                parts.append(constants[value.value.id])
            else:
                parts.append("\x00")
        return "".join(parts)
    return None


def _is_db(node: ast.AST) -> bool:
    """``db``, ``self.db``, ``store.db``: what sqlite-utils' ``db["table"]`` is used on."""
    name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")
    return name == "db" or name.endswith("_db")


def sources() -> dict[Path, ast.AST]:
    return {path: ast.parse(path.read_text()) for path in sorted(PACKAGE.rglob("*.py"))}


def sql_of(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of every SQL string in a module (docstrings left out)."""
    skip = _docstrings(tree)
    constants = _constants(tree)
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.JoinedStr):
            for value in node.values:  # its parts are visited as one text
                skip.add(id(value))
        text = _text(node, constants)
        if text and _SQL.search(text):
            out.append((node.lineno, text))
    return out


def api_tables_of(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, table) of ``db["table"]`` and ``db.table("table")`` uses."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and _is_db(node.value):
            key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                out.append((node.lineno, key.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "table"
            and _is_db(node.func.value)
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append((node.lineno, node.args[0].value))
    return out


def _api_creates(tree: ast.AST) -> list[str]:
    """Tables created through sqlite-utils: ``db["name"].create(…)``,
    ``db.create_table("name", …)``."""
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        target = node.func.value
        if (
            node.func.attr == "create"
            and isinstance(target, ast.Subscript)
            and _is_db(target.value)
            and isinstance(target.slice, ast.Constant)
        ):
            out.append(target.slice.value)
        if (
            node.func.attr == "create_table"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append(node.args[0].value)
    return out


def creators(trees: dict[Path, ast.AST]) -> dict[str, set[str]]:
    """Table → the domains whose SQL creates it."""
    found: dict[str, set[str]] = defaultdict(set)
    for path, tree in trees.items():
        names = [n for _, text in sql_of(tree) for n in _CREATE.findall(text)]
        for name in names + _api_creates(tree):
            found[name.lower()].add(domain_of(path))
    return found


def database_tables(tmp_path) -> set[str]:
    """Every table of a migrated database, after the first use of the vector index."""
    from conftest import make_settings

    from appliance.knowledge.store import KnowledgeStore

    settings = make_settings(tmp_path / "data")
    settings.paths.data_dir.mkdir(parents=True)
    db = open_db(settings)
    try:
        KnowledgeStore(db).ensure_vectors(4, "test")
        rows = db.execute("select name, sql from sqlite_master where type = 'table'").fetchall()
    finally:
        db.close()
    virtual = {name for name, sql in rows if sql and sql.lower().startswith("create virtual")}
    return {
        name
        for name, _ in rows
        if not name.startswith(("sqlite_", "_sqlite_"))
        and not any(name.startswith(v + "_") for v in virtual)  # FTS5 / vec0 shadow tables
    }


def test_import_contracts_hold():
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_every_table_is_created_by_exactly_one_domain(tmp_path):
    owners = creators(sources())
    shared = {name: sorted(domains) for name, domains in owners.items() if len(domains) > 1}
    assert not shared, f"tables created by more than one domain: {shared}"
    orphans = sorted(database_tables(tmp_path) - set(owners))
    assert not orphans, f"tables no domain's SQL creates: {orphans}"


def test_no_module_names_another_domains_tables():
    trees = sources()
    owner = {name: next(iter(domains)) for name, domains in creators(trees).items()}
    patterns = {name: re.compile(_NAMED.format(name), re.I) for name in owner}
    problems = []
    for path, tree in trees.items():
        here = domain_of(path)
        rel = path.relative_to(ROOT).as_posix()
        for line, text in sql_of(tree):
            for name, pattern in patterns.items():
                if owner[name] != here and pattern.search(text):
                    problems.append(f"{rel}:{line}: SQL names {name} (owned by {owner[name]})")
            if _DYNAMIC.search(text) and rel not in DYNAMIC_TABLES:
                problems.append(f"{rel}:{line}: SQL with a table name from a variable")
        for line, name in api_tables_of(tree):
            if name in owner and owner[name] != here:
                problems.append(f"{rel}:{line}: db[{name!r}] (owned by {owner[name]})")
    assert not problems, "\n".join(problems)
