"""Catalogs: per-category JSON Schemas that every normalized event must satisfy.

A catalog folder holds one JSON file per category (catalogs/README.md). The shared
envelope and the catalog meta-schema are part of the contract and always come from the
bundled ``catalogs/schema/``. Loading lints everything first and reports every problem
with its file and JSON path; a set that has a problem is never used.

The hot path validates with ``jsonschema-rs`` (compiled, ~2 us per event); ``jsonschema``
is used where rich errors matter (linting).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import jsonschema_rs

from otaudit_collector._resources import bundled_dir
from otaudit_collector.core.ocsf import Hint, check_hint

__all__ = [
    "CatalogError",
    "CatalogSet",
    "Problem",
    "Refusal",
    "lint_catalogs",
    "load_catalogs",
    "bundled_catalog_dirs",
    "catalog_fingerprint",
]

_MAX_ERRORS_PER_EVENT = 8


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message}" if self.path else f"{self.file}: {self.message}"


class CatalogError(Exception):
    """The catalogs cannot be used; ``problems`` lists every reason with file and path."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems) or [
            Problem("catalogs", "", "no catalog folder to load: set catalogs.bundled to true, or list folders in catalogs.dirs")
        ]
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the catalogs:\n{lines}")


@dataclass(frozen=True, slots=True)
class EventDef:
    """One event of a category. ``title`` is the catalog's short human title, or the event name when it gives none."""

    category: str
    name: str
    description: str
    deprecated: bool
    title: str
    ocsf: Hint = field(default_factory=Hint)
    """How a stream of format ``ocsf`` writes it (core/ocsf.py): the event's hint over its category's."""


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    title: str
    description: str
    version: str
    source: str
    events: dict[str, EventDef]
    personal: tuple[str, ...] = ()
    """JSON pointers of personal values beyond the envelope's (``personal`` in the file): sealed in the log."""


@dataclass(slots=True)
class CatalogSet:
    """The loaded catalogs: immutable once built; a reload builds a new one."""

    categories: dict[str, Category]
    validators: dict[tuple[str, str], jsonschema_rs.Validator] = field(repr=False)
    by_event: dict[str, list[str]] = field(repr=False)
    fingerprint: str = ""

    def personal_pointers(self, doc: dict[str, Any]) -> tuple[str, ...]:
        """What the catalog of ``doc``'s category marks as personal, besides the envelope's fields."""
        category = self.categories.get(doc.get("category"))  # type: ignore[arg-type]
        return category.personal if category is not None else ()

    def event(self, category: Any, event: Any) -> EventDef | None:
        """The definition of an event, if a loaded catalog has it."""
        found = self.categories.get(category) if isinstance(category, str) else None
        return found.events.get(event) if found is not None and isinstance(event, str) else None

    def check(self, doc: dict[str, Any]) -> Refusal | None:
        """Validate a normalized event; fill in its category when the event name implies it.

        None when valid; else why, as a reason word and problems naming where in the event.
        """
        event = doc.get("event")
        category = doc.get("category")
        if not category:
            owners = self.by_event.get(str(event), [])
            if len(owners) == 1:
                category = doc["category"] = owners[0]
            elif owners:
                return Refusal(
                    "ambiguous_event",
                    [
                        f"event '{event}' is defined in several categories ({', '.join(owners)}): set the attribute 'audit.category'"
                    ],
                )
            else:
                return Refusal(
                    "unknown_event", [f"event '{event}' is in no loaded catalog, and the record sets no 'audit.category'"]
                )
        validator = self.validators.get((category, event))  # type: ignore[arg-type]
        if validator is None:
            if category not in self.categories:
                known = ", ".join(sorted(self.categories)) or "none"
                return Refusal("unknown_category", [f"category '{category}' is not loaded (loaded categories: {known})"])
            hint = ""
            elsewhere = self.by_event.get(str(event))
            if elsewhere:
                hint = f"; it is defined in {', '.join(elsewhere)}"
            return Refusal("unknown_event", [f"event '{event}' is not in the catalog of category '{category}'{hint}"])
        if validator.is_valid(doc):
            return None
        problems = []
        for error in validator.iter_errors(doc):
            where = "/" + "/".join(str(part) for part in error.instance_path)
            problems.append(f"{where}: {error.message}")
            if len(problems) >= _MAX_ERRORS_PER_EVENT:
                break
        return Refusal("schema", problems or ["the event does not satisfy its schema"])


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the catalogs refused an event: ``reason`` in a word (ambiguous_event, unknown_event,
    unknown_category, schema), ``problems`` for the client."""

    reason: str
    problems: list[str]


SELF_AUDIT_CATEGORIES = ("site_access", "data_extraction")
"""The categories the API records its own reads in (selfaudit.py): loaded from the bundled catalogs
even without the other defaults, or every read would be refused as unrecordable."""


def bundled_catalog_dirs(packs: Iterable[str] = (), *, defaults: bool = True) -> list[Path]:
    """The bundled default catalogs, then the named example packs. Without the defaults, the
    bundled catalogs of ``SELF_AUDIT_CATEGORIES`` still come first (as files: a pack or an
    operator's folder may replace them)."""
    root = bundled_dir("catalogs")
    dirs = [root] if defaults else [root / f"{category}.json" for category in SELF_AUDIT_CATEGORIES]
    for pack in packs:
        folder = root / "examples" / pack
        if not folder.is_dir():
            available = sorted(p.name for p in (root / "examples").iterdir() if p.is_dir())
            raise CatalogError(
                [Problem(str(folder), "", f"no bundled catalog pack '{pack}' (available: {', '.join(available)})")]
            )
        dirs.append(folder)
    return dirs


def _schema(name: str) -> dict[str, Any]:
    path = bundled_dir("catalogs") / "schema" / name
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def compose(envelope: dict[str, Any], fragment: dict[str, Any]) -> dict[str, Any]:
    """The schema an event is validated with: the envelope plus the event's fragment."""
    composed = dict(envelope)
    composed.pop("$id", None)
    composed["allOf"] = [fragment]
    return composed


def catalog_fingerprint(dirs: Sequence[Path]) -> str:
    """Names, sizes and modification times of the catalog files: changes when a file does."""
    parts = []
    for folder in dirs:
        for path in _catalog_files(Path(folder)):
            try:
                stat = path.stat()
            except OSError:
                continue
            parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def _catalog_files(given: Path) -> list[Path]:
    """The catalog files of a folder, or the one file named."""
    return [given] if given.is_file() else sorted(given.glob("*.json"))


def lint_catalogs(dirs: Sequence[Path]) -> tuple[list[Problem], list[tuple[Path, dict[str, Any]]]]:
    """Check catalog folders (or single catalog files); return the problems and the parsed files that were read."""
    meta = _schema("catalog.json")
    envelope = _schema("envelope.json")
    meta_validator = jsonschema.Draft202012Validator(meta)
    problems: list[Problem] = []
    files: list[tuple[Path, dict[str, Any]]] = []
    for given in dirs:
        folder = Path(given)
        if not folder.is_dir() and not (folder.is_file() and folder.suffix == ".json"):
            problems.append(Problem(str(folder), "", "is not a folder"))
            continue
        seen: dict[str, Path] = {}
        paths = _catalog_files(folder)
        if not paths:
            problems.append(Problem(str(folder), "", "holds no catalog files (*.json)"))
        for path in paths:
            doc = _lint_file(path, meta_validator, envelope, problems)
            if doc is None:
                continue
            category = doc["category"]
            if category in seen:
                problems.append(
                    Problem(str(path), "$.category", f"category '{category}' is also defined in {seen[category].name}")
                )
                continue
            seen[category] = path
            files.append((path, doc))
    return problems, files


_FRAGMENT_META_RICH = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)


@functools.cache
def _fragment_meta() -> jsonschema_rs.Validator:
    """The Draft 2020-12 meta-schema, compiled once."""
    return jsonschema_rs.validator_for(jsonschema.Draft202012Validator.META_SCHEMA)


def _outside_references(node: Any, at: str) -> Iterable[tuple[str, str]]:
    """References in a fragment that do not point into the composed document (other files, URLs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str) and not value.startswith("#"):
                yield f"{at}['{key}']", value
            else:
                yield from _outside_references(value, f"{at}.{key}" if key.isidentifier() else f"{at}['{key}']")
    elif isinstance(node, list):
        for n, item in enumerate(node):
            yield from _outside_references(item, f"{at}[{n}]")


def _lint_file(
    path: Path, meta_validator: jsonschema.Draft202012Validator, envelope: dict[str, Any], problems: list[Problem]
) -> dict[str, Any] | None:
    name = str(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:  # a folder named *.json, no permission, removed meanwhile: a problem, not a crash
        problems.append(Problem(name, "$", f"cannot be read: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError as exc:
        problems.append(Problem(name, "$", f"is not UTF-8 text (byte {exc.start})"))
        return None
    except json.JSONDecodeError as exc:
        problems.append(Problem(name, "$", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"))
        return None
    errors = sorted(meta_validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    for error in errors:
        problems.append(Problem(name, error.json_path, error.message))
    if errors:
        return None
    before = len(problems)
    if doc["category"] != path.stem:
        problems.append(Problem(name, "$.category", f"'{doc['category']}' must match the file name '{path.stem}.json'"))
    for event, spec in doc["events"].items():
        where = f"$.events['{event}']"
        wrong = check_hint(doc.get("ocsf"), spec.get("ocsf"))
        if wrong:
            problems.append(Problem(name, f"{where}.ocsf", wrong))
        composed = compose(envelope, spec["schema"])
        invalid = False
        if not _fragment_meta().is_valid(spec["schema"]):  # the compiled check is fast; the rich one says where
            for error in _FRAGMENT_META_RICH.iter_errors(spec["schema"]):
                problems.append(
                    Problem(name, f"{where}.schema{error.json_path[1:]}", f"not a valid JSON Schema: {error.message}")
                )
                invalid = True
        for at, ref in _outside_references(spec["schema"], f"{where}.schema"):
            problems.append(Problem(name, at, f"'{ref}' refers outside the envelope; only '#/$defs/...' references are allowed"))
            invalid = True
        if invalid:
            continue  # compiling would report the same problem again, less clearly (or fetch a remote reference)
        try:
            compiled = jsonschema_rs.validator_for(composed, validate_formats=True)
        except (ValueError, jsonschema_rs.ReferencingError) as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            problems.append(Problem(name, f"{where}.schema", f"cannot be compiled: {first_line}"))
            continue
        for n, example in enumerate(spec.get("examples", [])):
            if example.get("category") != doc["category"] or example.get("event") != event:
                problems.append(
                    Problem(name, f"{where}.examples[{n}]", f"must have category '{doc['category']}' and event '{event}'")
                )
            for error in compiled.iter_errors(example):
                at = "/" + "/".join(str(p) for p in error.instance_path)
                problems.append(Problem(name, f"{where}.examples[{n}]", f"{at}: {error.message}"))
    return doc if len(problems) == before else None


def load_catalogs(dirs: Sequence[Path]) -> CatalogSet:
    """Lint and compile the catalogs in ``dirs``; a later folder replaces a category of an earlier one."""
    fingerprint = catalog_fingerprint(dirs)
    problems, files = lint_catalogs(dirs)
    if problems:
        raise CatalogError(problems)
    envelope = _schema("envelope.json")
    by_id: dict[str, tuple[Path, dict[str, Any]]] = {}
    for path, doc in files:
        by_id[doc["category"]] = (path, doc)
    categories: dict[str, Category] = {}
    validators: dict[tuple[str, str], jsonschema_rs.Validator] = {}
    by_event: dict[str, list[str]] = {}
    for category_id, (path, doc) in sorted(by_id.items()):
        events = {}
        for event, spec in doc["events"].items():
            events[event] = EventDef(
                category_id,
                event,
                spec["description"],
                bool(spec.get("deprecated", False)),
                spec.get("title") or event,
                Hint.resolve(doc.get("ocsf"), spec.get("ocsf")),
            )
            validators[(category_id, event)] = jsonschema_rs.validator_for(
                compose(envelope, spec["schema"]), validate_formats=True
            )
            by_event.setdefault(event, []).append(category_id)
        categories[category_id] = Category(
            category_id, doc["title"], doc["description"], doc["version"], str(path), events, tuple(doc.get("personal", ()))
        )
    return CatalogSet(categories, validators, by_event, fingerprint)
