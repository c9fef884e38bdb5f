"""The leaf entry: RFC 8785 against an independent implementation, personal pointers, seals and erasure."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

import otaudit_verify.entry as entry_module
from otaudit_verify.entry import (
    ENTRY_VERSION,
    PERSONAL_POINTERS,
    EntryError,
    canonical_json,
    commitment,
    entry_hash,
    entry_hash_owned,
    erase,
    leaf_entry,
    leaf_entry_owned,
    personal_pointers,
    seal,
)

# --- RFC 8785 -----------------------------------------------------------------------------

# Characters where JSON escaping, UTF-8 or UTF-16 ordering have edge cases.
_SPECIAL = st.sampled_from(
    [
        *["\x00", "\x08", "\x0c", "\x1f", "\x7f", '"', "\\", "/", "\u2028", "é", "€", "\ud7ff", "\ue000", "\ufb33", "\uffff"],
        *["\U00010000", "\U0001f600", "\U0010ffff", ":1.5,", ",1e+16]", "[12345678901234567}", "1", "-", "10.0.0.1,"],
    ]
)
_CHARS = st.characters(exclude_categories=["Cs"])  # every code point but lone surrogates
TEXT = st.lists(_CHARS | _SPECIAL, max_size=6).map("".join)
INTS = st.integers(-(2**60), 2**60) | st.integers(-(2**1000), 2**1000) | st.sampled_from([2**53, -(2**53), 2**53 + 1, 10**16])
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5),
        max_leaves=25,
    )


ANY_JSON = json_values(st.none() | st.booleans() | INTS | FLOATS | TEXT)
NO_FLOATS = json_values(st.none() | st.booleans() | st.integers(-(2**53), 2**53) | TEXT)


def for_oracle(value: Any) -> Any:
    """rfc8785 refuses integers beyond 2**53 - 1; JCS writes them as their double, as we do."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**53 else float(value)
    if isinstance(value, list):
        return [for_oracle(item) for item in value]
    if isinstance(value, dict):
        return {key: for_oracle(item) for key, item in value.items()}
    return value


@given(ANY_JSON)
def test_canonical_json_equals_rfc8785(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(for_oracle(value))


@given(NO_FLOATS)
def test_canonical_json_equals_rfc8785_where_the_fast_path_runs(value: Any) -> None:
    assert canonical_json(value) == rfc8785.dumps(for_oracle(value))
    assert canonical_json({"wrapped": [value]}) == rfc8785.dumps({"wrapped": [for_oracle(value)]})


@given(st.dictionaries(TEXT, st.none(), max_size=8))
def test_keys_sort_by_utf16_code_units(value: dict[str, None]) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)
    order = list(json.loads(canonical_json(value)))
    assert order == sorted(value, key=lambda key: key.encode("utf-16-be"))


def test_rfc8785_sorting_example() -> None:
    # RFC 8785 section 3.2.3.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    assert list(json.loads(canonical_json(value))) == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


def test_rfc8785_transformation_example() -> None:
    # RFC 8785 section 3.2.4.
    source = r"""{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"""
    expected = '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    assert canonical_json(json.loads(source)) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("bits", "expected"),
    [
        # RFC 8785 Appendix B.
        ("0000000000000000", "0"),
        ("8000000000000000", "0"),
        ("0000000000000001", "5e-324"),
        ("8000000000000001", "-5e-324"),
        ("7fefffffffffffff", "1.7976931348623157e+308"),
        ("ffefffffffffffff", "-1.7976931348623157e+308"),
        ("4340000000000000", "9007199254740992"),
        ("c340000000000000", "-9007199254740992"),
        ("4430000000000000", "295147905179352830000"),
        ("44b52d02c7e14af5", "9.999999999999997e+22"),
        ("44b52d02c7e14af6", "1e+23"),
        ("44b52d02c7e14af7", "1.0000000000000001e+23"),
        ("444b1ae4d6e2ef4e", "999999999999999700000"),
        ("444b1ae4d6e2ef4f", "999999999999999900000"),
        ("444b1ae4d6e2ef50", "1e+21"),
        ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
        ("3eb0c6f7a0b5ed8d", "0.000001"),
        ("41b3de4355555553", "333333333.3333332"),
        ("41b3de4355555554", "333333333.33333325"),
        ("41b3de4355555555", "333333333.3333333"),
        ("41b3de4355555556", "333333333.3333334"),
        ("41b3de4355555557", "333333333.33333343"),
        ("becbf647612f3696", "-0.0000033333333333333333"),
        ("43143ff3c1cb0959", "1424953923781206.2"),
    ],
)
def test_rfc8785_number_vectors(bits: str, expected: str) -> None:
    number = struct.unpack(">d", bytes.fromhex(bits))[0]
    assert canonical_json(number) == expected.encode()
    assert canonical_json([number]) == f"[{expected}]".encode()
    assert canonical_json({"n": number}) == f'{{"n":{expected}}}'.encode()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.0, "1"),
        (-1.5, "-1.5"),
        (1e16, "10000000000000000"),
        (1e-7, "1e-7"),
        (1e-5, "0.00001"),
        (123e18, "123000000000000000000"),
        (2**53, "9007199254740992"),
        (2**53 + 1, "9007199254740992"),  # the nearest double
        (10**21, "1e+21"),
        (-(10**30), "-1e+30"),
        (True, "true"),
        (None, "null"),
        ("\u2028\x7f/", '"\u2028\x7f/"'),
        ("\x00\x1f\b\f\n\r\t", '"\\u0000\\u001f\\b\\f\\n\\r\\t"'),
        ((1, "a"), '[1,"a"]'),
        ({}, "{}"),
        ([], "[]"),
    ],
)
def test_canonical_forms(value: Any, expected: str) -> None:
    assert canonical_json(value) == expected.encode("utf-8")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (float("nan"), "not finite"),
        ([float("inf")], "not finite"),
        ({"a": -float("inf")}, "not finite"),
        ({"a": 10**400}, "beyond the largest IEEE double"),
        ({"a": "\ud800"}, "lone surrogate"),
        (["x\udfff"], "lone surrogate"),
        ({"\ud800": 1}, "lone surrogate"),
        ({"k\ud800": 1, "\U0001f600\ufb33": 1}, "lone surrogate"),  # the full serializer's key sort
        ({1: "a"}.items(), "not JSON"),
        ({"when": object()}, "object value"),
        ({"a": b"bytes"}, "bytes value"),
        ({1: "a", "b": 2}, "object key 1 is a int"),
    ],
)
def test_what_is_not_json_is_refused(value: Any, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        canonical_json(value)


def test_deep_or_circular_values_are_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EntryError, match="nested too deeply"):
        canonical_json(loop)


def test_fast_path_serves_typical_events(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_full_serializer(value: Any, out: list[str]) -> None:
        raise AssertionError("the full serializer ran")

    monkeypatch.setattr(entry_module, "_serialize", no_full_serializer)
    plain = [EVENT, {**EVENT, "message": "Ann 🎉 renamed Ümit's role", "details": {"note": "v1.2 at 10.0.0.1, [2] {3}"}}]
    for doc in plain:
        assert canonical_json(doc) == rfc8785.dumps(doc)
    # Text that looks like a float in the output costs the full serializer (and is still right).
    monkeypatch.undo()
    doc = {**EVENT, "details": {"note": "ratio 1.5, up"}}
    assert canonical_json(doc) == rfc8785.dumps(doc)


EVENT: dict[str, Any] = {
    "id": "0193b3c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d",
    "tenant": "acme",
    "category": "accounts_configuration",
    "event": "updateRole",
    "occurred_at": "2026-11-21T10:15:30.123456Z",
    "outcome": "success",
    "actor": {"type": "user", "id": "u-17", "email": "ann@acme.test", "name": "Ann Example", "roles": ["admin"]},
    "client": {"address": "203.0.113.9", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "session_id": "s-1"},
    "target": {"type": "role", "id": "r-3", "name": "Auditors"},
    "related": [{"type": "user", "id": "u-9", "name": "Bob"}],
    "changes": [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}],
    "details": {"via": "console"},
    "reason": None,
    "source": {"service": "accounts-api", "instance": "pod-7", "sequence": 4211},
    "trace": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7"},
}


@pytest.mark.parametrize(
    "doc",
    [
        EVENT,
        {**EVENT, "details": {"amount": 12.5, "ratio": 1e-7, "big": 2**60, "count": 3}},
        {**EVENT, "actor": {**EVENT["actor"], "name": "Zoë 東京 🎉", "\ufb33": 1, "\U0001f600": 2}},
        {**EVENT, "message": 'quotes " and \\ and \u0001 and \u2028', "attributes": {"x.y": [True, None, -0.0]}},
    ],
)
def test_realistic_events_equal_rfc8785(doc: dict[str, Any]) -> None:
    assert canonical_json(doc) == rfc8785.dumps(for_oracle(doc))


# --- personal pointers --------------------------------------------------------------------


def test_personal_pointers_of_a_typical_event() -> None:
    assert PERSONAL_POINTERS == ("/actor/email", "/actor/name", "/client/address", "/client/user_agent")
    assert personal_pointers(EVENT) == ["/actor/email", "/actor/name", "/client/address", "/client/user_agent"]


def test_personal_pointers_skip_absent_and_null_values() -> None:
    doc = {"actor": {"type": "user", "id": "u-1", "email": None}, "client": {"address": "192.0.2.1"}}
    assert personal_pointers(doc) == ["/client/address"]
    assert personal_pointers({"id": "x"}) == []
    assert personal_pointers({"actor": "not an object"}) == []


@pytest.mark.parametrize(("actor_id", "committed"), [("ann@acme.test", True), ("u-17", False), (17, False), (None, False)])
def test_an_actor_id_that_looks_like_an_email_is_personal(actor_id: Any, committed: bool) -> None:
    assert ("/actor/id" in personal_pointers({"actor": {"id": actor_id}})) is committed


def test_catalog_pointers_with_wildcards_and_escaping() -> None:
    doc = {
        "changes": [
            {"field": "email", "old": "a@x.test", "new": "b@x.test"},
            {"field": "phone", "old": None, "new": "+1 555"},
        ],
        "related": [{"type": "user", "name": "Bob"}, {"type": "user"}],
        "details": {"contact/info": {"phone": "555", "fax": None}, "a~b": "x", "list": ["p", None]},
    }
    extra = [
        "/changes/*/old",
        "/changes/*/new",
        "/related/*/name",
        "/details/contact~1info/*",
        "/details/a~0b",
        "/details/list/*",
    ]
    assert personal_pointers(doc, extra) == [
        "/changes/0/new",
        "/changes/0/old",
        "/changes/1/new",
        "/details/a~0b",
        "/details/contact~1info/phone",
        "/details/list/0",
        "/related/0/name",
    ]
    # A wildcard names keys it finds, escaped.
    assert personal_pointers({"details": {"a/b": 1, "c~d": 2}}, ["/details/*"]) == ["/details/a~1b", "/details/c~0d"]
    # Indices are exact: no leading zeros, no '-'.
    assert personal_pointers(doc, ["/changes/00/old", "/changes/-/old", "/changes/2/old"]) == []


def test_pointers_inside_a_committed_value_are_left_out() -> None:
    assert personal_pointers(EVENT, ["/actor", "/client/*"]) == [
        "/actor",
        "/client/address",
        "/client/session_id",
        "/client/user_agent",
    ]
    assert personal_pointers(EVENT, ["/changes", "/changes/*/old"]) == [
        "/actor/email",
        "/actor/name",
        "/changes",
        "/client/address",
        "/client/user_agent",
    ]


@pytest.mark.parametrize(
    ("pattern", "message"), [("actor/email", "does not start with '/'"), ("", "does not start"), ("/a~2", "'~' not followed")]
)
def test_bad_pointers_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(EntryError, match=message):
        personal_pointers(EVENT, [pattern])


# --- seals, entries, erasure --------------------------------------------------------------

ZERO_SALT = base64.b64encode(bytes(16)).decode()

# The worked example in otaudit_verify.entry's docstring.
EXAMPLE_DOC = {"id": "e-1", "tenant": "acme", "event": "login", "actor": {"type": "user", "email": "ann@acme.test"}}
EXAMPLE_RECEIVED_AT = "2026-01-02T03:04:05Z"
EXAMPLE_SEALS = {"/actor/email": {"salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}
EXAMPLE_ENTRY = (
    b'{"committed":{"/actor/email":"S1kUk2oHkjWQ9vGShWoR5Vl0BIb1fGtZSTAjnF9pKiw="},'
    b'"event":{"actor":{"email":null,"type":"user"},"event":"login","id":"e-1","tenant":"acme"},'
    b'"received_at":"2026-01-02T03:04:05Z","v":1}'
)
EXAMPLE_HASH = "e8acb7be8e9383686b12f7830bf52deebb89a3e13e472d05e605597def13138b"


def test_the_worked_example() -> None:
    assert commitment(bytes(16), "ann@acme.test").hex() == "4b5914936a07923590f6f192856a11e559740486f57c6b594930239c5f692a2c"
    assert hashlib.sha256(bytes(16) + b'"ann@acme.test"').digest() == commitment(bytes(16), "ann@acme.test")
    entry = leaf_entry(EXAMPLE_DOC, EXAMPLE_RECEIVED_AT, EXAMPLE_SEALS)
    assert entry == EXAMPLE_ENTRY
    assert len(entry) == 210
    assert entry_hash(EXAMPLE_DOC, EXAMPLE_RECEIVED_AT, EXAMPLE_SEALS).hex() == EXAMPLE_HASH
    assert hashlib.sha256(b"\x00" + EXAMPLE_ENTRY).hexdigest() == EXAMPLE_HASH
    assert entry_module.__doc__ is not None
    for text in [EXAMPLE_ENTRY.decode(), EXAMPLE_HASH, "4b5914936a07923590f6f192856a11e559740486f57c6b594930239c5f692a2c"]:
        assert text in entry_module.__doc__


def test_erasing_the_worked_example_keeps_its_leaf() -> None:
    doc, seals = erase(EXAMPLE_DOC, EXAMPLE_SEALS, "/actor/email")
    assert doc["actor"] == {"type": "user", "email": "[erased]"}
    assert seals == {"/actor/email": {"commitment": "S1kUk2oHkjWQ9vGShWoR5Vl0BIb1fGtZSTAjnF9pKiw="}}
    assert leaf_entry(doc, EXAMPLE_RECEIVED_AT, seals) == EXAMPLE_ENTRY
    assert EXAMPLE_DOC["actor"] == {"type": "user", "email": "ann@acme.test"}  # the input is untouched
    assert EXAMPLE_SEALS == {"/actor/email": {"salt": "AAAAAAAAAAAAAAAAAAAAAA=="}}


def counting_random() -> Any:
    counter = iter(range(1, 1000))

    def random(size: int) -> bytes:
        return bytes([next(counter)]) * size

    return random


def test_seal_gives_each_pointer_a_fresh_salt() -> None:
    pointers = personal_pointers(EVENT)
    seals = seal(EVENT, pointers, counting_random())
    assert list(seals) == pointers
    assert [base64.b64decode(s["salt"]) for s in seals.values()] == [bytes([i]) * 16 for i in range(1, 5)]
    real = seal(EVENT, pointers)
    assert len({s["salt"] for s in real.values()}) == 4
    assert all(len(base64.b64decode(s["salt"])) == 16 for s in real.values())
    assert seal(EVENT, []) == {}


def test_seal_refuses_what_it_cannot_seal() -> None:
    with pytest.raises(EntryError, match="'/actor/phone' is not in the event"):
        seal(EVENT, ["/actor/phone"])
    with pytest.raises(EntryError, match="overlap"):
        seal(EVENT, ["/actor", "/actor/email"])
    with pytest.raises(EntryError, match="returned 8 bytes"):
        seal(EVENT, ["/actor/email"], lambda size: bytes(8))


def test_leaf_entry_commits_and_nulls_every_sealed_value() -> None:
    pointers = personal_pointers(EVENT, ["/changes/*/old", "/related/*/name"])
    seals = seal(EVENT, pointers, counting_random())
    before = copy.deepcopy(EVENT)
    entry = json.loads(leaf_entry(EVENT, "2026-11-21T10:15:31Z", seals))
    assert before == EVENT  # not mutated
    assert entry["v"] == ENTRY_VERSION and entry["received_at"] == "2026-11-21T10:15:31Z"
    assert entry["event"]["actor"] == {"type": "user", "id": "u-17", "email": None, "name": None, "roles": ["admin"]}
    assert entry["event"]["client"] == {"address": None, "user_agent": None, "session_id": "s-1"}
    assert entry["event"]["changes"] == [{"field": "permissions", "old": None, "new": ["read", "export"]}]
    assert entry["event"]["related"] == [{"type": "user", "id": "u-9", "name": None}]
    assert entry["event"]["target"] == EVENT["target"]
    for pointer, form in seals.items():
        value: Any = EVENT
        for token in pointer[1:].split("/"):
            value = value[int(token)] if isinstance(value, list) else value[token]
        expected = commitment(base64.b64decode(form["salt"]), value)
        assert base64.b64decode(entry["committed"][pointer]) == expected
    assert (
        entry_hash(EVENT, "2026-11-21T10:15:31Z", seals)
        == hashlib.sha256(b"\x00" + leaf_entry(EVENT, "2026-11-21T10:15:31Z", seals)).digest()
    )


def test_leaf_entry_copies_only_the_containers_on_sealed_paths() -> None:
    doc = copy.deepcopy(EVENT)
    seals = seal(doc, ["/actor/email"])
    _, old = entry_module._substitute(doc, dict.fromkeys(seals))
    new_doc, _ = entry_module._substitute(doc, {"/actor/email": None})
    assert new_doc is not doc and new_doc["actor"] is not doc["actor"]
    assert new_doc["client"] is doc["client"] and new_doc["changes"] is doc["changes"]
    assert old == {"/actor/email": "ann@acme.test"}


def test_leaf_entry_without_seals() -> None:
    entry = leaf_entry(EVENT, "t", {})
    assert json.loads(entry) == {"v": 1, "event": EVENT, "received_at": "t", "committed": {}}


def test_the_leaf_depends_on_the_salt_the_value_and_nothing_else() -> None:
    seals_a = {"/actor/email": {"salt": ZERO_SALT}}
    seals_b = {"/actor/email": {"salt": base64.b64encode(b"\x01" * 16).decode()}}
    other_value = {**EVENT, "actor": {**EVENT["actor"], "email": "eve@acme.test"}}
    reordered = dict(reversed(list(EVENT.items())))
    assert leaf_entry(EVENT, "t", seals_a) != leaf_entry(EVENT, "t", seals_b)
    assert leaf_entry(EVENT, "t", seals_a) != leaf_entry(other_value, "t", seals_a)
    assert leaf_entry(EVENT, "t", seals_a) == leaf_entry(reordered, "t", seals_a)
    assert leaf_entry(EVENT, "t", seals_a) != leaf_entry(EVENT, "u", seals_a)


@pytest.mark.parametrize(
    ("seals", "message"),
    [
        ({"/actor/phone": {"salt": ZERO_SALT}}, "'/actor/phone' is not in the event"),
        ({"/actor/email/x": {"salt": ZERO_SALT}}, "'/actor/email/x' is not in the event"),
        ({"/changes/1/old": {"salt": ZERO_SALT}}, "'/changes/1/old' is not in the event"),
        ({"/actor/email": {}}, "seal of '/actor/email' is neither"),
        ({"/actor/email": {"salt": ZERO_SALT, "commitment": ZERO_SALT}}, "neither"),
        ({"/actor/email": {"pepper": ZERO_SALT}}, "neither"),
        ({"/actor/email": "salt"}, "neither"),
        ({"/actor/email": {"salt": "AAAA"}}, "salt of sealed pointer '/actor/email' is not the standard base64 of 16 bytes"),
        ({"/actor/email": {"salt": 12}}, "not the standard base64"),
        (
            {"/actor/email": {"commitment": ZERO_SALT}},
            "commitment of sealed pointer '/actor/email' is not the standard base64 of 32",
        ),
        ({"/actor": {"salt": ZERO_SALT}, "/actor/email": {"salt": ZERO_SALT}}, "overlap"),
        ({"actor/email": {"salt": ZERO_SALT}}, "does not start with '/'"),
    ],
)
def test_leaf_entry_rejects_bad_seals(seals: dict[str, Any], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        leaf_entry(EVENT, "t", seals)
    with pytest.raises(EntryError, match=message):  # the in-place one refuses the same
        leaf_entry_owned(copy.deepcopy(EVENT), "t", seals)


@given(
    st.dictionaries(TEXT, ANY_JSON, max_size=4),
    st.sampled_from([(), ("/client/address",), ("/details/*",), ("/changes/*/old", "/changes/*/new")]),
    st.one_of(TEXT, st.none()),
)
def test_the_in_place_entry_is_the_entry(details: dict[str, Any], extra: tuple[str, ...], email: Any) -> None:
    """What verifiers use on the documents they just parsed: the same bytes as leaf_entry."""
    doc = {
        **EVENT,
        "actor": {**EVENT["actor"], "email": email, "id": "ann@acme.test"},
        "details": details,
        "changes": [{"field": "x", "old": copy.deepcopy(details), "new": email}],  # parsed JSON shares no objects
    }
    seals = seal(doc, personal_pointers(doc, extra))
    assert leaf_entry_owned(copy.deepcopy(doc), "2026-12-07T10:00:00.000000Z", seals) == leaf_entry(
        doc, "2026-12-07T10:00:00.000000Z", seals
    )
    assert entry_hash_owned(copy.deepcopy(doc), "t", seals) == entry_hash(doc, "t", seals)


def test_leaf_entry_rejects_a_bad_received_at_or_doc() -> None:
    with pytest.raises(EntryError, match="received_at"):
        leaf_entry(EVENT, 17, {})  # type: ignore[arg-type]
    with pytest.raises(EntryError, match="must be a JSON object"):
        leaf_entry([], "t", {})  # type: ignore[arg-type]


def test_erase_keeps_every_leaf() -> None:
    pointers = personal_pointers(EVENT, ["/changes/*/old", "/related/*/name", "/target"])
    seals = seal(EVENT, pointers)
    leaf = leaf_entry(EVENT, "t", seals)
    doc, current = EVENT, seals
    for pointer in pointers:
        doc, current = erase(doc, current, pointer)
        assert leaf_entry(doc, "t", current) == leaf
    assert doc["actor"]["email"] == doc["client"]["address"] == doc["target"] == "[erased]"
    assert doc["changes"][0]["old"] == "[erased]" and doc["related"][0]["name"] == "[erased]"
    assert all(set(form) == {"commitment"} for form in current.values())
    assert EVENT["actor"]["email"] == "ann@acme.test" and set(seals["/actor/email"]) == {"salt"}
    # Erasing again, or with another placeholder, changes nothing in the leaf.
    again, again_seals = erase(doc, current, "/actor/email", placeholder=None)
    assert again["actor"]["email"] is None and again_seals == current
    assert leaf_entry(again, "t", again_seals) == leaf


def test_erase_only_erases_sealed_values() -> None:
    with pytest.raises(EntryError, match="not sealed"):
        erase(EVENT, {}, "/actor/email")
    with pytest.raises(EntryError, match="not in the event"):
        erase({"actor": {}}, {"/actor/email": {"salt": ZERO_SALT}}, "/actor/email")
