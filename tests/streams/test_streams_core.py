"""The pure core of streams (core/streams.py): specs, starting points, the plan at delivery,
backoff, and the encryption of destinations' secrets."""

from __future__ import annotations

import datetime as dt

import pytest

from otaudit_collector.core.plans import Plan
from otaudit_collector.core.query import BadFilter
from otaudit_collector.core.streams import (
    RETRY_AFTER_LIMIT_SECONDS,
    BadStream,
    SecretUnreadable,
    Start,
    backoff_seconds,
    decrypt_secret,
    delivery_categories,
    encrypt_secret,
    parse_change,
    parse_declared,
    parse_new,
    parse_start,
    secrets_key,
)

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
URL = "https://siem.example.com/otaudit"


def test_a_new_stream_is_checked_field_by_field() -> None:
    spec = parse_new({"name": "siem", "url": URL, "filter": {"category": "site_access", "q": "-outcome:success"}}, now=NOW)
    assert (spec.kind, spec.settings, spec.start) == ("webhook", {"url": URL}, Start("now"))
    assert spec.filter == {"category": ["site_access"], "q": ["-outcome:success"]}
    for body, field in (
        ({"url": URL}, "name"),
        ({"name": "-x", "url": URL}, "name"),
        ({"name": "x"}, "url"),
        ({"name": "x", "url": URL, "folder": "/tmp"}, "folder"),
        ({"name": "x", "kind": "queue", "url": URL}, "kind"),
        ({"name": "x", "url": URL, "filter": {"until": "1"}}, "filter.until"),
        ({"name": "x", "url": URL, "filter": {"event": [1]}}, "filter.event"),
        ({"name": "x", "url": URL, "filter": {"q": "\ud800"}}, "filter.q"),
        ({"name": "x", "url": URL, "timeout_seconds": 0}, "timeout_seconds"),
    ):
        with pytest.raises(BadStream) as refused:
            parse_new(body, now=NOW)
        assert refused.value.field == field, body
    with pytest.raises(BadFilter, match=r"^q: "):
        parse_new({"name": "x", "url": URL, "filter": {"q": "nope"}}, now=NOW)
    with pytest.raises(BadStream, match=r"streams\.declared"):
        parse_new({"name": "x", "kind": "file", "folder": "/tmp"}, now=NOW, kinds=("webhook",))
    assert parse_new({"name": "x", "kind": "file", "folder": "/a", "rotate_bytes": 4096}, now=NOW).settings == {
        "folder": "/a",
        "rotate_bytes": 4096,
    }


def test_a_change_names_only_what_changes() -> None:
    change = parse_change({"filter": {"outcome": "failure"}, "timeout_seconds": 3}, "webhook")
    assert change.name is None and change.filter == {"outcome": ["failure"]} and change.settings == {"timeout_seconds": 3.0}
    for body in ({}, {"start": "now"}, {"kind": "file"}, {"folder": "/x"}):
        with pytest.raises(BadStream):
            parse_change(body, "webhook")


def test_starting_points() -> None:
    assert parse_start("now", now=NOW) == Start("now")
    assert parse_start({"seq": 7}, now=NOW) == Start("seq", seq=7)
    assert parse_start({"time": "2026-11-01T00:00:00Z"}, now=NOW).time == dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    assert parse_start({"time": 1_700_000_000}, now=NOW).time == dt.datetime.fromtimestamp(1_700_000_000, dt.UTC)
    for bad in (
        "later",
        {"seq": 0},
        {"seq": True},
        {"seq": 1.5},
        {"time": "2027-01-01T00:00:00Z"},
        {"time": "noon"},
        {"seq": 1, "time": 1},
    ):
        with pytest.raises(BadStream, match=r"^start"):
            parse_start(bad, now=NOW)


def test_the_plan_at_delivery_narrows_and_never_refuses() -> None:
    basic = Plan("basic", ("site_access", "accounts_configuration"), 365, 365)
    everything = Plan("all", ("*",), None, None)
    assert delivery_categories(basic, []) == ["site_access", "accounts_configuration"]
    assert delivery_categories(basic, ["site_access", "inventory_configuration"]) == ["site_access"]
    assert delivery_categories(basic, ["inventory_configuration"]) == []  # lost by a downgrade: nothing of it
    assert delivery_categories(everything, []) is None
    assert delivery_categories(everything, ["x"]) == ["x"]


def test_backoff_doubles_up_to_its_cap_with_jitter_and_honours_retry_after() -> None:
    top = [backoff_seconds(n, max_seconds=60, rand=lambda: 0.0) for n in range(1, 10)]
    assert top == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_seconds(3, max_seconds=60, rand=lambda: 1.0) == 2.0  # at most half taken off
    assert backoff_seconds(10_000, max_seconds=300, rand=lambda: 0.5) == 225.0  # no overflow
    assert backoff_seconds(1, max_seconds=60, retry_after=30, rand=lambda: 0.0) == 30
    assert backoff_seconds(1, max_seconds=60, retry_after=10**9, rand=lambda: 0.0) == RETRY_AFTER_LIMIT_SECONDS


def test_secrets_decrypt_only_with_both_keys_for_their_own_stream() -> None:
    key = secrets_key(b"k" * 32, "pepper-0123456789")
    stored = encrypt_secret(key, "acme", "str_1", "whsec_abc")
    assert b"whsec_abc" not in stored and decrypt_secret(key, "acme", "str_1", stored) == "whsec_abc"
    for other_key, tenant, stream_id in (
        (secrets_key(b"k" * 32, "another pepper!!!"), "acme", "str_1"),
        (secrets_key(b"j" * 32, "pepper-0123456789"), "acme", "str_1"),
        (key, "globex", "str_1"),
        (key, "acme", "str_2"),
    ):
        with pytest.raises(SecretUnreadable, match="make it again"):
            decrypt_secret(other_key, tenant, stream_id, stored)


def test_declared_streams_are_checked_with_their_place_in_the_file() -> None:
    secret = "whsec_" + "a" * 43
    items = [
        {"name": "archive", "tenants": "*", "kind": "file", "folder": "/srv/a"},
        {"name": "siem", "tenants": ["acme"], "kind": "webhook", "url": URL, "secret_env": "HOOK"},
    ]
    found = parse_declared(items, environ={"HOOK": secret}, now=NOW)
    assert [(d.tenants, d.spec.name, d.secret) for d in found] == [(None, "archive", None), (("acme",), "siem", secret)]
    for environ, bad, said in (
        ({}, items, "streams.declared[1].secret_env: the environment variable HOOK is not set"),
        ({"HOOK": "short"}, items, "streams.declared[1].secret_env: a webhook secret"),
        ({"HOOK": secret}, [items[0], items[0]], "streams.declared[1].name"),
        ({}, [{**items[0], "filter": {"q": "x"}}], "streams.declared[0].q"),
    ):
        with pytest.raises(BadStream) as refused:
            parse_declared(bad, environ=environ, now=NOW)
        assert str(refused.value).startswith(said), str(refused.value)
