"""How settings are declared, read and checked: the machinery behind ``appliance.config``.

``config.py`` keeps the settings classes (one place to add a setting); this module turns a
TOML file, ``APPLIANCE_<SECTION>__<KEY>`` environment variables and command-line overrides
into them, and describes them for the generated docs. It is the only reader of
``os.environ`` in the package.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import logging
import os
import textwrap
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from appliance.errors import ConfigError

ENV_PREFIX = "APPLIANCE_"
CONFIG_FILE_NAME = "appliance.toml"
ENVIRONMENT = "environment"  # the source of values read_env found
DEFAULT_DATA_DIR = "./data"

log = logging.getLogger("appliance.config")


def setting(
    default: Any,
    *,
    choices: tuple[Any, ...] | None = None,
    min: float | None = None,
    max: float | None = None,
) -> Any:
    """A setting's default with its bounds; its help is the string below it (``help_texts``)."""
    return field(default=default, metadata={"choices": choices, "min": min, "max": max})


def secret() -> Any:
    """A secret setting: repr=False keeps it out of any printed Settings."""
    return field(default="", repr=False)


def help_texts(section: type) -> dict[str, str]:
    """Each setting of ``section`` → its help: the string right below its field (an attribute
    docstring, read from the source for the docs)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(section))).body[0].body
    return {
        node.target.id: " ".join(doc.value.value.split())
        for node, doc in itertools.pairwise(body)
        if isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and isinstance(doc, ast.Expr)
        and isinstance(doc.value, ast.Constant)
    }


class _Under:
    """A path inside the data dir (a class attribute of ``Paths``)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, paths: Paths, owner: type | None = None) -> Path:
        return paths.data_dir / self.name


@dataclass(frozen=True)
class Paths:
    """Where things live inside the data dir."""

    data_dir: Path

    database = _Under("appliance.db")
    queue = _Under("queue.db")
    files = _Under("files")
    models = _Under("models")
    outbox = _Under("outbox")
    secrets = _Under("secrets")
    exports = _Under("exports")
    #: State of the running services (``appliance up`` writes it; nothing secret).
    run = _Under("run")


def load(
    root: type,
    retired: Mapping[str, str],
    data_dir: str | Path | None,
    config_file: str | Path | None,
    overrides: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None,
) -> Any:
    """An instance of the settings class ``root``: see ``Settings.load``."""
    env = os.environ if environ is None else environ
    data = Path(data_dir or env.get(f"{ENV_PREFIX}DATA_DIR") or DEFAULT_DATA_DIR)
    data = data.expanduser().absolute()
    explicit = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    path = Path(explicit).expanduser().absolute() if explicit else data / CONFIG_FILE_NAME
    settings = root(data_dir=data, config_file=path if path.exists() else None)
    if explicit and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    if path.exists():
        settings = apply(settings, read_toml(path), str(path), retired)
    settings = apply(settings, read_env(env), ENVIRONMENT, retired)
    if overrides:
        settings = settings.replace(**{k: v for k, v in overrides.items() if v is not None})
    return settings


def split_overrides(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"web.port": 9000}`` as ``{"web": {"port": 9000}}``."""
    raw: dict[str, dict[str, Any]] = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return raw


def sections(root: type) -> dict[str, type]:
    """Section name → dataclass of the settings class ``root``, in declaration order."""
    return {
        f.name: f.default_factory  # type: ignore[misc]
        for f in dataclasses.fields(root)
        if f.default_factory is not dataclasses.MISSING
    }


def iter_settings(root: type) -> Iterator[tuple[str, dataclasses.Field]]:
    """Every setting as ``("section.key", field)``: for docs and the docs test."""
    for section, cls in sections(root).items():
        for f in dataclasses.fields(cls):
            yield f"{section}.{f.name}", f


def env_name(dotted: str) -> str:
    section, _, key = dotted.partition(".")
    return f"{ENV_PREFIX}{section.upper()}__{key.upper()}"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(
                f"unknown setting '{key}' in {path}: settings live in sections such as [web]"
            )
    return data


def read_env(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The ``APPLIANCE_<SECTION>__<KEY>`` variables' texts, converted when applied."""
    raw: dict[str, dict[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        raw.setdefault(section.lower(), {})[key.lower()] = value
    return raw


def apply(
    settings: Any, raw: dict[str, dict[str, Any]], source: str, retired: Mapping[str, str]
) -> Any:
    """``settings`` with ``raw`` (section → key → value from ``source``) converted and checked.

    A key in ``retired`` (``"section.key"`` → why it went) is ignored with one warning.
    """
    known = sections(type(settings))
    changes: dict[str, Any] = {}
    for section, values in raw.items():
        if section not in known:
            where = _where(source, f"{section}.{next(iter(values), '')}")
            raise ConfigError(f"unknown settings section '{section}' {where}")
        cls = known[section]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        updates = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            where = _where(source, dotted)
            if dotted in retired and key not in fields:
                reason = retired[dotted]
                log.warning("setting '%s' %s is gone and ignored: %s", dotted, where, reason)
                continue
            if key not in fields:
                raise ConfigError(f"unknown setting '{dotted}' {where}")
            updates[key] = _convert(dotted, cls, fields[key], value, source)
        changes[section] = dataclasses.replace(getattr(settings, section), **updates)
    return dataclasses.replace(settings, **changes)


def _where(source: str, dotted: str) -> str:
    if source == ENVIRONMENT:
        return f"(environment variable {env_name(dotted)})"
    if source == "override":
        return "(command line)"
    return f"(in {source})"


def _convert(dotted: str, owner: type, f: dataclasses.Field, value: Any, source: str) -> Any:
    kind = typing.get_type_hints(owner)[f.name]
    where = _where(source, dotted)
    try:
        # A TOML or command-line value must already have the field's type (an integer serves
        # for a float, a list for a tuple): msgspec's strict conversion checks exactly that.
        result = _from_env(kind, value) if source == ENVIRONMENT else msgspec.convert(value, kind)
    except (ValueError, KeyError, msgspec.ValidationError):
        raise ConfigError(
            f"setting '{dotted}' {where} must be {_describe(kind)}, got {value!r}"
        ) from None
    meta = f.metadata
    if meta.get("choices") and result not in meta["choices"]:
        options = ", ".join(map(str, meta["choices"]))
        raise ConfigError(f"setting '{dotted}' {where} must be one of {options}, got {result!r}")
    if meta.get("min") is not None and result < meta["min"]:
        raise ConfigError(f"setting '{dotted}' {where} must be at least {meta['min']}")
    if meta.get("max") is not None and result > meta["max"]:
        raise ConfigError(f"setting '{dotted}' {where} must be at most {meta['max']}")
    return result


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}


def _from_env(kind: Any, text: str) -> Any:
    """An environment variable's text as a ``kind``; ``ValueError`` or ``KeyError`` if not one."""
    if kind is bool:
        return _BOOLS[text.strip().lower()]
    if kind is str:
        return text
    if typing.get_origin(kind) is tuple:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind in (int, float):
        return kind(text.strip())
    raise TypeError(f"no converter for {kind}")  # a new field type is a programming error


def _describe(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "a list of strings"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, str(kind))


def describe_default(f: dataclasses.Field) -> str:
    """The default as it would be written in appliance.toml (for docs)."""
    value = f.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)
