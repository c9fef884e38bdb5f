"""The ingest's one-serialization sealing (core.sealing) is the leaf entry's definition
(otaudit_verify.entry), byte for byte, on any event: what the collector hashes at ingest is
what a verifier recomputes from the stored row."""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otaudit_collector.core.sealing import seal_event
from otaudit_verify.entry import canonical_json, entry_hash, leaf_entry, personal_pointers

TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), TEXT
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    actor: dict[str, Any] = {"type": "user", "id": draw(st.sampled_from(["u-1", "ann@acme.test", "x@y"]))}
    for key in ("email", "name"):
        if draw(st.booleans()):
            actor[key] = draw(st.one_of(TEXT, st.none()))
    doc: dict[str, Any] = {
        "id": "e-1",
        "tenant": "acme",
        "category": "accounts_configuration",
        "event": "updateRole",
        "occurred_at": "2026-12-07T10:00:00.000000Z",
        "outcome": "success",
        "actor": actor,
        "details": draw(st.dictionaries(TEXT, VALUES, max_size=4)),
    }
    if draw(st.booleans()):
        doc["client"] = {"address": draw(TEXT), "user_agent": draw(VALUES)}
    if draw(st.booleans()):
        doc["changes"] = [{"field": "email", "old": draw(VALUES), "new": draw(VALUES)}]
    return doc


def _zeros(n: int) -> bytes:
    return bytes(n)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events(), st.sampled_from([(), ("/changes/*/old", "/changes/*/new"), ("/details/*",)]))
def test_the_ingest_leaf_is_the_entry_of_the_stored_row(doc: dict[str, Any], extra: tuple[str, ...]) -> None:
    before = copy.deepcopy(doc)
    sealed = seal_event(doc, "2026-12-07T10:00:01.123456Z", extra, random=_zeros)
    assert doc == before  # swapped out and back in place
    stored = json.loads(sealed.text)
    # The same JSON (a double like 5.2e16 is written as JCS writes it, 52000000000000000, and
    # reads back as an int: the same number, as jsonb would store either).
    assert canonical_json(stored) == canonical_json(doc)
    seals = json.loads(sealed.seals) if sealed.seals else {}
    assert sorted(seals) == personal_pointers(doc, extra)  # every personal value, and only those, sealed
    assert sealed.leaf == entry_hash(stored, "2026-12-07T10:00:01.123456Z", seals)
    # No sealed value is in the entry, only its commitment.
    entry = leaf_entry(stored, "2026-12-07T10:00:01.123456Z", seals)
    for pointer in seals:
        assert json.loads(entry)["committed"][pointer]


def test_an_email_is_sealed_and_absent_from_the_entry() -> None:
    doc = {"id": "e-1", "tenant": "acme", "event": "login", "actor": {"type": "user", "id": "ann@acme.test", "email": "ann@acme.test"}}
    sealed = seal_event(doc, "2026-01-02T03:04:05.000000Z")
    assert sealed.seals is not None and set(json.loads(sealed.seals)) == {"/actor/email", "/actor/id"}
    entry = leaf_entry(json.loads(sealed.text), "2026-01-02T03:04:05.000000Z", json.loads(sealed.seals))
    assert b"ann@acme.test" not in entry
