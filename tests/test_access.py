"""Tenants, plans and tokens: the commands, what is stored, and the bootstrap admin token."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
from pgcontrol import free_port
from support import CollectorProcess, RunningCollector, good_attributes, otaudit, record, request, rows, wait_until

from otaudit_collector.core.tokens import Principal, TokenCache, new_token, parse_token, secret_hash, secret_matches
from otaudit_collector.storage import access

PEPPER = "a-pepper-of-16-characters-at-least"


def test_token_text_parses_and_hashes_under_its_pepper() -> None:
    token_id, secret, text = new_token()
    assert re.fullmatch(r"otaudit_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", text)
    assert parse_token(f"  {text}\n") == (token_id, secret)
    assert parse_token(text[:-1]) is None and parse_token("Bearer " + text) is None
    stored = secret_hash(secret, PEPPER)
    assert secret_matches(secret, PEPPER, stored)
    assert not secret_matches(secret, "another-pepper-entirely", stored)
    assert not secret_matches(secret[:-1] + "x", PEPPER, stored)
    assert new_token()[2] != text


def test_the_token_cache_remembers_for_its_time_keyed_by_hash() -> None:
    now = [100.0]
    cache = TokenCache(PEPPER, 10, lambda: now[0])
    text = new_token()[2]
    key = cache.key(text)
    assert key == secret_hash(text, PEPPER) and text.encode() not in key, "keyed by the HMAC, never the token"
    assert cache.get(key) == (False, None)
    who = Principal("0123456789ab", "acme", "admin", "ann")
    cache.put(key, who)
    assert cache.get(key) == (True, who)
    now[0] += 9.9
    assert cache.get(key) == (True, who)
    now[0] += 0.1
    assert cache.get(key) == (False, None), "expired: looked up again, so a revocation takes effect"
    wrong = cache.key("otaudit_000000000000_" + "x" * 43)
    cache.put(wrong, None)
    assert cache.get(wrong) == (True, None), "an unknown token is remembered as unknown"
    off = TokenCache(PEPPER, 0, lambda: now[0])
    off.put(key, who)
    assert off.get(key) == (False, None), "0 remembers nothing"


def test_a_full_token_cache_keeps_the_valid_tokens() -> None:
    now = [0.0]
    cache = TokenCache(PEPPER, 60, lambda: now[0])
    who = Principal("0123456789ab", "acme", "auditor", "ann")
    cache.put(b"valid", who)
    for i in range(TokenCache.MAX_ENTRIES):  # a flood of wrong tokens
        cache.put(f"wrong-{i}".encode(), None)
    assert cache.get(b"valid") == (True, who)
    assert sum(cache.get(f"wrong-{i}".encode())[0] for i in range(TokenCache.MAX_ENTRIES)) < TokenCache.MAX_ENTRIES


def cli(db: str, *args: str, pepper: str = PEPPER) -> tuple[int, str, str]:
    done = otaudit(*args, "--database-url", db, env={"OTAUDIT_TOKEN_PEPPER": pepper})
    return done.returncode, done.stdout, done.stderr


def test_token_create_prints_it_once_and_stores_only_a_hash(db: str) -> None:
    code, out, err = cli(db, "token", "create", "--tenant", "acme", "--role", "admin", "--name", "Ann (SecOps)")
    assert code == 0, err
    [text] = out.splitlines()  # alone on its line
    token_id, secret = parse_token(text) or ("", "")
    assert f"admin token {token_id} for tenant acme (shown once" in err
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT tenant, role, name, secret_hash::text FROM tokens").fetchall()
        assert stored[0][:3] == ("acme", "admin", "Ann (SecOps)")
        assert secret not in stored[0][3] and secret.encode().hex() not in stored[0][3]
        principal = access.authenticate(conn, text, PEPPER)
        assert principal is not None and (principal.tenant, principal.role, principal.name) == ("acme", "admin", "Ann (SecOps)")
        assert access.authenticate(conn, text, "a-different-pepper-value") is None
        assert access.authenticate(conn, text.replace(secret, secret[::-1]), PEPPER) is None

    code, out, _ = cli(db, "token", "create", "--tenant", "acme", "--role", "ingest", "--json")
    made = json.loads(out)
    assert (made["tenant"], made["role"]) == ("acme", "ingest") and parse_token(made["token"])

    code, out, _ = cli(db, "token", "list")
    assert code == 0 and token_id in out and made["id"] in out and "2 token(s)" in out
    assert secret not in out and made["token"] not in out
    listed = [json.loads(line) for line in cli(db, "token", "list", "--json", "--tenant", "acme")[1].splitlines()]
    assert {t["id"] for t in listed} == {token_id, made["id"]}
    assert all("token" not in t and "secret_hash" not in t for t in listed)


def test_a_revoked_token_no_longer_authenticates(db: str) -> None:
    _, text, _ = cli(db, "token", "create", "--tenant", "acme", "--role", "auditor")
    text = text.strip()
    token_id = (parse_token(text) or ("", ""))[0]
    code, out, _ = cli(db, "token", "revoke", token_id)
    assert code == 0 and f"token {token_id} revoked" in out
    with psycopg.connect(db) as conn:
        assert access.authenticate(conn, text, PEPPER) is None
    code, _, err = cli(db, "token", "revoke", token_id)
    assert code == 2 and f"no live token '{token_id}'" in err
    assert token_id not in cli(db, "token", "list")[1]
    assert token_id in cli(db, "token", "list", "--all")[1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["token", "create", "--tenant", "acme", "--role", "root"], "invalid choice: 'root'"),
        (["token", "create", "--tenant", "no spaces", "--role", "admin"], "is not a valid tenant id"),
        (
            ["tenant", "set", "acme", "--plan", "platinum"],
            "plan 'platinum' is not one of the configured plans (basic, pro, enterprise)",
        ),
        (["tenant", "set", "bad/tenant", "--plan", "pro"], "is not a valid tenant id"),
    ],
)
def test_bad_arguments_are_refused_with_the_reason(db: str, args: list[str], words: str) -> None:
    code, _, err = cli(db, *args)
    assert code == 2
    assert words in err


def test_a_weak_pepper_is_refused_without_showing_it(db: str) -> None:
    code, _, err = cli(db, "token", "list", pepper="short-secret")
    assert code == 2
    assert "auth.token_pepper" in err and "OTAUDIT_TOKEN_PEPPER" in err
    assert "short-secret" not in err


def test_tenants_get_the_default_plan_at_ingest_and_keep_a_plan_set_by_hand(collector: RunningCollector) -> None:
    db = collector.conninfo
    assert cli(db, "tenant", "set", "globex", "--plan", "enterprise")[0] == 0
    body = request(
        [record(attrs=good_attributes(audit__tenant__id=t)) for t in ("acme", "acme", "globex", "initech")]
    ).SerializeToString()
    import grpc

    with grpc.insecure_channel(collector.grpc_target) as channel:
        channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")(body, timeout=30)
    plans = {r["tenant"]: r["plan"] for r in rows(db, "SELECT tenant, plan FROM tenants")}
    assert plans == {"acme": "basic", "globex": "enterprise", "initech": "basic"}

    code, out, _ = cli(db, "tenant", "set", "acme", "--plan", "pro")
    assert code == 0 and "tenant acme: plan pro (was basic)" in out
    listed = {t["tenant"]: t for t in map(json.loads, cli(db, "tenant", "list", "--json")[1].splitlines())}
    assert listed["acme"] == {"tenant": "acme", "plan": "pro", "plan_set": True, "events": 2}
    assert listed["initech"]["plan"] == "basic" and listed["initech"]["events"] == 1
    assert "3 tenant(s)" in cli(db, "tenant", "list")[1]


def test_a_first_serve_prints_a_bootstrap_admin_token_once(db: str, tmp_path: Path) -> None:
    ports = [str(free_port()) for _ in range(3)]
    args = ["serve", "--database-url", db, "--grpc-port", ports[0], "--http-port", ports[1], "--api-port", ports[2]]
    env = {"OTAUDIT_TOKEN_PEPPER": PEPPER}
    first = CollectorProcess(args, env=env, cwd=tmp_path).start()
    try:
        banner = "".join(first.output)
        assert "No admin token existed: this one is for tenant 'acme'" in banner
        [text] = [line.strip() for line in first.output if parse_token(line)]
    finally:
        assert first.terminate() == 0
    with psycopg.connect(db) as conn:
        principal = access.authenticate(conn, text, PEPPER)
    assert principal is not None and (principal.tenant, principal.role, principal.name) == ("acme", "admin", "bootstrap admin")
    second = CollectorProcess(args, env=env, cwd=tmp_path).start()
    try:
        assert not any(parse_token(line) for line in second.output)
        assert "No admin token existed" not in "".join(second.output)
    finally:
        second.terminate()
    wait_until(lambda: second.proc is not None and second.proc.poll() is not None, what="the second collector to stop")
    assert text not in "".join(second.output)
