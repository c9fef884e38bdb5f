"""The docs are kept honest: every config key, environment variable, flag, command and catalog event is documented.

- every key of the configuration schema is in ``config/otaudit.yaml`` (the documented
  defaults), with a comment beside it;
- every ``OTAUDIT_*`` variable is named in ``config/otaudit.yaml`` beside its key, and in
  README.md;
- every flag of ``otaudit serve`` and every command is in README.md, as are the files in
  ``config/``;
- every category and event of the bundled catalogs and packs has a description (the
  catalogs are the event documentation).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from otaudit_collector.cli import build_parser
from otaudit_collector.config import ENVIRONMENT

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEFAULTS = REPO / "config" / "otaudit.yaml"
SCHEMA = REPO / "collector" / "otaudit_collector" / "config" / "schema.json"
CATALOG_FILES = sorted((REPO / "catalogs").glob("*.json")) + sorted((REPO / "catalogs" / "examples").glob("*/*.json"))
ANY = "*"  # a key path part standing for any name (the plans)


def readme() -> str:
    if not README.is_file():
        pytest.fail(f"{README} is missing: it documents the commands, flags and environment variables")
    return README.read_text(encoding="utf-8")


# -- configuration keys ----------------------------------------------------------------


def schema_keys(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every key path under ``properties``, recursively; a map of named entries (plans) contributes ``*``."""
    for name, sub in node.get("properties", {}).items():
        path = (*prefix, name)
        yield path
        yield from schema_keys(sub, path)
    entries = node.get("additionalProperties")
    if isinstance(entries, dict):
        yield from schema_keys(entries, (*prefix, ANY))


SCHEMA_KEYS = list(schema_keys(json.loads(SCHEMA.read_text(encoding="utf-8"))))


def lookup(doc: Any, path: tuple[str, ...]) -> bool:
    if not path:
        return True
    if not isinstance(doc, dict):
        return False
    head, *rest = path
    if head == ANY:
        return any(lookup(entry, tuple(rest)) for entry in doc.values())
    return head in doc and lookup(doc[head], tuple(rest))


def line_of(lines: list[str], path: tuple[str, ...]) -> int:
    """The index of the line of ``otaudit.yaml`` that sets ``path``, found by indentation."""
    found, start, indent = -1, 0, -1
    for part in path:
        found, child = -1, None
        for n in range(start, len(lines)):
            stripped = lines[n].lstrip()
            if not stripped or stripped.startswith("#"):
                continue
            depth = len(lines[n]) - len(stripped)
            if depth <= indent:
                break  # past the end of the enclosing section
            child = depth if child is None else child
            if depth == child and stripped.startswith(f"{part}:"):
                found = n
                break
        if found < 0:
            raise AssertionError(f"{'.'.join(path)} is not in {DEFAULTS.name}")
        start, indent = found + 1, len(lines[found]) - len(lines[found].lstrip())
    return found


def test_schema_keys_were_found() -> None:
    assert ("listen", "grpc_port") in SCHEMA_KEYS
    assert ("plans", ANY, "categories") in SCHEMA_KEYS
    assert ("ingest", "clock_skew", "max_past_days") in SCHEMA_KEYS


@pytest.mark.parametrize("path", SCHEMA_KEYS, ids=[".".join(p) for p in SCHEMA_KEYS])
def test_every_config_key_is_in_the_documented_defaults(path: tuple[str, ...]) -> None:
    doc = yaml.safe_load(DEFAULTS.read_text(encoding="utf-8"))
    assert lookup(doc, path), f"config key {'.'.join(path)} is not documented in config/otaudit.yaml"


@pytest.mark.parametrize("path", [p for p in SCHEMA_KEYS if ANY not in p], ids=[".".join(p) for p in SCHEMA_KEYS if ANY not in p])
def test_every_setting_has_a_comment(path: tuple[str, ...]) -> None:
    lines = DEFAULTS.read_text(encoding="utf-8").splitlines()
    n = line_of(lines, path)
    section = lines[n].rstrip().endswith(":")  # a section: its keys carry the comments
    commented = "#" in lines[n] or lines[n - 1].strip().startswith("#")
    assert section or commented, f"{'.'.join(path)} has no comment in config/otaudit.yaml: {lines[n]!r}"


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_every_environment_variable_is_named_beside_its_key(name: str) -> None:
    key, _ = ENVIRONMENT[name]
    lines = DEFAULTS.read_text(encoding="utf-8").splitlines()
    line = lines[line_of(lines, key)]
    assert name in line, f"config/otaudit.yaml does not name {name} beside {'.'.join(key)}: {line!r}"


# -- README: environment variables, flags, commands, files --------------------------


@pytest.mark.parametrize("name", [*sorted(ENVIRONMENT), "OTAUDIT_CONFIG"])
def test_every_environment_variable_is_in_the_readme(name: str) -> None:
    assert f"`{name}`" in readme(), f"README.md does not document the environment variable `{name}`"


def subcommands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command: (("catalog", "lint"), its parser), ..."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield prefix, parser
        return
    for name, sub in actions[0].choices.items():
        yield from subcommands(sub, (*prefix, name))


COMMANDS = dict(subcommands(build_parser()))
SERVE_FLAGS = sorted(
    option
    for action in COMMANDS[("serve",)]._actions
    for option in action.option_strings
    if option.startswith("--") and option != "--help"
)


def test_commands_were_found() -> None:
    assert {("serve",), ("migrate",), ("catalog", "lint"), ("rejects", "list"), ("rejects", "replay")} <= set(COMMANDS)
    assert {"--config", "--data-dir", "--database-url", "--host", "--grpc-port", "--http-port", "--api-port"} <= set(SERVE_FLAGS)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=[" ".join(c) for c in sorted(COMMANDS)])
def test_every_command_is_in_the_readme(command: tuple[str, ...]) -> None:
    name = "otaudit " + " ".join(command)
    assert f"`{name}" in readme(), f"README.md does not document the command `{name}`"


@pytest.mark.parametrize("flag", SERVE_FLAGS)
def test_every_serve_flag_is_in_the_readme(flag: str) -> None:
    assert re.search(rf"`{re.escape(flag)}\b", readme()), f"README.md does not document the flag `{flag}` of otaudit serve"


@pytest.mark.parametrize("path", sorted((REPO / "config").iterdir()), ids=lambda p: p.name)
def test_every_config_file_is_in_the_readme(path: Path) -> None:
    assert f"config/{path.name}" in readme(), f"README.md does not mention config/{path.name}"


# -- catalogs are the event docs -----------------------------------------------------

EVENTS = [
    (path, name, spec) for path in CATALOG_FILES for name, spec in json.loads(path.read_text(encoding="utf-8"))["events"].items()
]


@pytest.mark.parametrize("path", CATALOG_FILES, ids=lambda p: p.relative_to(REPO / "catalogs").as_posix())
def test_every_category_has_a_title_and_description(path: Path) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert str(doc.get("title", "")).strip(), f"{path.name} has no title"
    assert str(doc.get("description", "")).strip(), f"{path.name} has no description"


@pytest.mark.parametrize(
    ("path", "name", "spec"), EVENTS, ids=[f"{p.relative_to(REPO / 'catalogs').as_posix()}:{n}" for p, n, _ in EVENTS]
)
def test_every_catalog_event_has_a_description(path: Path, name: str, spec: dict[str, Any]) -> None:
    description = str(spec.get("description", "")).strip()
    assert description, f"{path.name}: event {name} has no description"
    assert description != name, f"{path.name}: event {name} is described only by its name"
