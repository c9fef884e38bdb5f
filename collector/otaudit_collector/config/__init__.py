"""Configuration: defaults, a YAML file, environment variables and flags, checked by a JSON Schema.

The bundled ``config/otaudit.yaml`` holds every default. A ``--config`` file is merged
over it, then ``OTAUDIT_*`` variables, then flags. The merged result is validated
against ``schema.json``; every problem is reported at once with its path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from otaudit_collector._resources import bundled_dir

__all__ = ["ConfigError", "Settings", "load_settings", "ENVIRONMENT", "default_config_path"]


def _boolean(text: str) -> bool:
    """An environment variable's yes or no: true/false, 1/0, yes/no, on/off (any case)."""
    value = text.lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


ENVIRONMENT: dict[str, tuple[tuple[str, ...], Callable[[str], Any]]] = {
    "OTAUDIT_HOST": (("listen", "host"), str),
    "OTAUDIT_GRPC_PORT": (("listen", "grpc_port"), int),
    "OTAUDIT_HTTP_PORT": (("listen", "http_port"), int),
    "OTAUDIT_API_HOST": (("listen", "api_host"), str),
    "OTAUDIT_API_PORT": (("listen", "api_port"), int),
    "OTAUDIT_WORKERS": (("listen", "workers"), int),
    "OTAUDIT_DATABASE_URL": (("database", "url"), str),
    "OTAUDIT_DATABASE_READ_URL": (("database", "read_url"), str),
    "OTAUDIT_DATA_DIR": (("database", "data_dir"), str),
    "OTAUDIT_LOG_LEVEL": (("logging", "level"), str),
    "OTAUDIT_TOKEN_PEPPER": (("auth", "token_pepper"), str),
    "OTAUDIT_REQUIRE_INGEST_TOKEN": (("auth", "require_ingest_token"), _boolean),
    "OTAUDIT_SIGNING_KEY": (("integrity", "signing_key"), str),
}
"""Environment variables and the configuration key each sets (OTAUDIT_CONFIG names the file)."""


_SECRETS = frozenset({"auth.token_pepper", "database.url", "database.read_url", "integrity.signing_key"})
"""Keys whose values never appear in an error message (a URL may carry a password)."""


def _secret_problem(rule: str, value: Any) -> str:
    said = {
        "pattern": f"does not match '{value}'",
        "minLength": f"is shorter than {value} characters",
        "type": f"is not of type {value}",
    }.get(rule, f"does not satisfy {rule} {value}")
    return said + " (the value is not shown: it is a secret)"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{listing}")


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration. ``raw`` is the merged document, for sections read elsewhere.

    Paths (``database.data_dir``, ``catalogs.dirs``) are absolute in ``raw``: those from
    the config file were resolved against the file's folder, the others against the
    working directory at load time.
    """

    raw: Mapping[str, Any]
    source: str
    config_dir: Path | None = None

    def get(self, *path: str) -> Any:
        node: Any = self.raw
        for part in path:
            node = node[part]
        return node

    @property
    def token_pepper(self) -> str:
        """The secret key of the token hashes (``auth.token_pepper``); empty when unset."""
        return str(self.raw["auth"]["token_pepper"] or "")

    @property
    def base_dir(self) -> Path:
        """The config file's folder, or the working directory when there is no file."""
        return self.config_dir if self.config_dir is not None else Path.cwd()

    def path(self, *key: str) -> Path:
        value = Path(self.get(*key)).expanduser()
        return value if value.is_absolute() else self.base_dir / value


def default_config_path() -> Path:
    return bundled_dir("config") / "otaudit.yaml"


def _schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((Path(__file__).parent / "schema.json").read_text(encoding="utf-8"))
    return loaded


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot be read: {exc.strerror}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}"]) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(str(path), ["must be a mapping of sections (listen, database, catalogs, ingest, ...)"])
    return doc


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if value is None and isinstance(out.get(key), dict):
            continue  # an empty section (every key commented out) changes nothing
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "plans":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _absolute(value: Any, base: Path) -> Any:
    """``value`` as an absolute path string against ``base``; anything not a string is left to the schema."""
    if not isinstance(value, str) or not value:
        return value
    return os.path.normpath(base / Path(value).expanduser())


def _resolve_paths(doc: Mapping[str, Any], base: Path) -> None:
    """Make the path settings in ``doc`` absolute against ``base``, in place (wrong types are left alone)."""
    database = doc.get("database")
    if isinstance(database, dict) and "data_dir" in database:
        database["data_dir"] = _absolute(database["data_dir"], base)
    integrity = doc.get("integrity")
    if isinstance(integrity, dict):
        for key in ("signing_key_file", "witness_dir"):
            if key in integrity:
                integrity[key] = _absolute(integrity[key], base)
    catalogs = doc.get("catalogs")
    if isinstance(catalogs, dict) and isinstance(catalogs.get("dirs"), list):
        catalogs["dirs"] = [_absolute(d, base) for d in catalogs["dirs"]]
    streams = doc.get("streams")
    if isinstance(streams, dict) and isinstance(streams.get("declared"), list):
        for declared in streams["declared"]:
            if isinstance(declared, dict) and "folder" in declared:
                declared["folder"] = _absolute(declared["folder"], base)


def _problems(validator: jsonschema.Draft202012Validator, doc: Mapping[str, Any], origins: Mapping[str, str]) -> list[str]:
    """Every schema violation in ``doc`` as ``path: message``; one line per unknown key."""
    found: list[tuple[list[str], str]] = []
    for error in validator.iter_errors(doc):
        path = [str(p) for p in error.absolute_path]
        schema = error.schema if isinstance(error.schema, Mapping) else {}
        if (
            error.validator == "additionalProperties"
            and schema.get("additionalProperties") is False
            and isinstance(error.instance, Mapping)
        ):
            known = list(schema.get("properties", {}))
            what = "unknown section" if not path else "unknown key"
            for key in error.instance:
                if key not in known:
                    found.append(([*path, str(key)], f"{what}; expected one of: {', '.join(known)}"))
            continue
        if "propertyNames" in error.relative_schema_path:
            found.append(([*path, str(error.instance)], f"is not an allowed name: {error.message}"))
            continue
        if ".".join(path) in _SECRETS:  # say what is wrong, never the value
            found.append((path, _secret_problem(str(error.validator), error.validator_value)))
            continue
        found.append((path, error.message))
    problems = []
    for path, message in sorted(found):
        where = ".".join(path) or "(top level)"
        origin = origins.get(where)
        problems.append(f"{where}: {message}" + (f" (set by {origin})" if origin else ""))
    return problems


def _set(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = doc
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def load_settings(
    config_file: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> Settings:
    """Merge defaults, file, environment and flag ``overrides`` (key path -> value), then validate."""
    environ = environ if environ is not None else {}
    cwd = Path.cwd()
    doc = _read_yaml(default_config_path())
    _resolve_paths(doc, cwd)
    source = "defaults"
    config_dir: Path | None = None
    config_file = config_file or environ.get("OTAUDIT_CONFIG") or None
    if config_file:
        path = Path(config_file).expanduser()
        over = _read_yaml(path)
        config_dir = path.resolve().parent
        _resolve_paths(over, config_dir)
        doc = _merge(doc, over)
        source = str(path)
    problems = []
    origins: dict[str, str] = {}
    for name, (key, kind) in ENVIRONMENT.items():
        if name in environ and environ[name] != "":
            raw = environ[name]
            try:
                _set(doc, key, kind(raw.strip()))
            except ValueError:
                said = {int: "an integer", _boolean: "true or false"}.get(kind, "valid")
                problems.append(f"{name}: {raw!r} is not {said}")
            else:
                origins[".".join(key)] = name
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(doc, key, value)
            origins[".".join(key)] = "the command line"
    _resolve_paths(doc, cwd)  # environment and flags: relative to the working directory
    problems.extend(_problems(jsonschema.Draft202012Validator(_schema()), doc, origins))
    if not problems and doc["default_plan"] not in doc["plans"]:
        problems.append(f"default_plan: '{doc['default_plan']}' is not one of the plans ({', '.join(doc['plans'])})")
    if problems:
        raise ConfigError(source, problems)
    return Settings(doc, source, config_dir)
