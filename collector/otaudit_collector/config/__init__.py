"""Configuration: defaults, a YAML file, environment variables and flags, checked by a JSON Schema.

The bundled ``config/otaudit.yaml`` holds every default. A ``--config`` file is merged
over it, then ``OTAUDIT_*`` variables, then flags. The merged result is validated
against ``schema.json``; every problem is reported at once with its path.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from otaudit_collector._resources import bundled_dir

__all__ = ["ConfigError", "Settings", "load_settings", "ENVIRONMENT", "default_config_path"]

ENVIRONMENT: dict[str, tuple[tuple[str, ...], type]] = {
    "OTAUDIT_HOST": (("listen", "host"), str),
    "OTAUDIT_GRPC_PORT": (("listen", "grpc_port"), int),
    "OTAUDIT_HTTP_PORT": (("listen", "http_port"), int),
    "OTAUDIT_API_HOST": (("listen", "api_host"), str),
    "OTAUDIT_API_PORT": (("listen", "api_port"), int),
    "OTAUDIT_DATABASE_URL": (("database", "url"), str),
    "OTAUDIT_DATA_DIR": (("database", "data_dir"), str),
    "OTAUDIT_LOG_LEVEL": (("logging", "level"), str),
}
"""Environment variables and the configuration key each sets (OTAUDIT_CONFIG names the file)."""


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists every reason with its path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        listing = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{listing}")


@dataclass(frozen=True, slots=True)
class Settings:
    """The validated configuration. ``raw`` is the merged document, for sections read elsewhere."""

    raw: Mapping[str, Any]
    source: str

    def get(self, *path: str) -> Any:
        node: Any = self.raw
        for part in path:
            node = node[part]
        return node

    @property
    def base_dir(self) -> Path:
        """Relative paths in a config file are relative to that file; otherwise to the working directory."""
        if self.source.endswith((".yaml", ".yml", ".json")):
            return Path(self.source).resolve().parent
        return Path.cwd()

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
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "plans":
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


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
    doc = _read_yaml(default_config_path())
    source = "defaults"
    config_file = config_file or environ.get("OTAUDIT_CONFIG") or None
    if config_file:
        path = Path(config_file)
        doc = _merge(doc, _read_yaml(path))
        source = str(path)
    problems = []
    for name, (key, kind) in ENVIRONMENT.items():
        if name in environ and environ[name] != "":
            raw = environ[name]
            try:
                _set(doc, key, kind(raw))
            except ValueError:
                problems.append(f"{name}: {raw!r} is not {'an integer' if kind is int else 'valid'}")
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(doc, key, value)
    validator = jsonschema.Draft202012Validator(_schema())
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    if not problems:
        if doc["default_plan"] not in doc["plans"]:
            problems.append(f"default_plan: '{doc['default_plan']}' is not one of the plans ({', '.join(doc['plans'])})")
    if problems:
        raise ConfigError(source, problems)
    return Settings(doc, source)
