"""The tamper-evident log against a real collector and PostgreSQL: every stored event is a leaf,
checkpoints are signed and served, proofs verify, and ``otaudit verify`` pinpoints tampering
done with direct SQL.
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from support import RunningCollector, otaudit, settings_for
from test_api_reads import ROLE, send, token

from otaudit_collector.integrity import LogKeys, Witnesses, load_log_keys, make_checkpoints
from otaudit_collector.storage import log as logdb
from otaudit_collector.verify_command import TenantReport, verify_tenant
from otaudit_verify import merkle
from otaudit_verify.checkpoint import parse_checkpoint, parse_tlog_proof
from otaudit_verify.entry import entry_hash, erase
from otaudit_verify.note import generate_signer, open_note, parse_verifier_key

EVENTS = 300


def _doc(n: int, tenant: str = "acme") -> dict[str, Any]:
    doc = copy.deepcopy(ROLE)
    doc["tenant"] = tenant
    doc["actor"] = {"type": "user", "id": f"u-{n}", "email": f"user{n}@acme.test", "name": f"User {n}"}
    doc["details"] = {"via": "ui" if n % 2 else "api", "n": n}
    return doc


@pytest.fixture
def witness(tmp_path: Path) -> Path:
    return tmp_path / "witness"


@pytest.fixture
def logged(db: str, witness: Path) -> Iterator[RunningCollector]:
    """A collector with a witness folder, holding EVENTS events of acme and a few of globex, checkpointed."""
    running = RunningCollector(
        settings_for(
            db,
            {
                ("auth", "token_cache_seconds"): 0,
                ("integrity", "witness_dir"): str(witness),
                ("integrity", "checkpoint_seconds"): 3600,  # the test signs them itself
            },
        )
    )
    try:
        for start in range(0, EVENTS, 100):
            send(running.grpc_target, [(_doc(n), None) for n in range(start, start + 100)])
        send(running.grpc_target, [(_doc(n, "globex"), None) for n in range(5)])
        assert set(running.call(running.collector.make_checkpoints_now())) == {"acme", "globex"}
        yield running
    finally:
        running.stop()


def _keys(running: RunningCollector) -> LogKeys:
    keys = running.collector.log_keys
    assert keys is not None
    return keys


def _verify(running: RunningCollector, tenant: str = "acme", witness: Path | None = None, **kw: Any) -> TenantReport:
    keys = _keys(running)
    notes = Witnesses(str(witness)).published(keys.origin(tenant)) if witness is not None else []
    return verify_tenant(running.conninfo, tenant, kw.pop("trusted", keys.verifiers(tenant)), witness_notes=notes, **kw)


def _sql(conninfo: str, *statements: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.transaction():
        for statement in statements:
            conn.execute(statement)


def _event_at(conninfo: str, seq: int, tenant: str = "acme") -> str:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT id FROM events WHERE tenant = %s AND seq = %s", (tenant, seq)).fetchone()
    assert row is not None
    return str(row[0])


# -- the log as written --------------------------------------------------------------------


def test_every_event_is_a_leaf_in_seq_order_and_the_log_verifies(logged: RunningCollector, witness: Path) -> None:
    with psycopg.connect(logged.conninfo) as conn:
        sizes = dict(conn.execute("SELECT tenant, log_size FROM tenant_seq WHERE log_size = last_seq").fetchall())
        rows = conn.execute(
            "SELECT doc, seals, to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
            " FROM events WHERE tenant = 'acme' ORDER BY seq"
        ).fetchall()
        source = logdb.TileSource(conn, "acme")
        root = source.root(len(rows))
    assert sizes == {"acme": EVENTS, "globex": 5}
    # The leaves, recomputed here from the rows, are the tree whose root the tiles give.
    assert merkle.root_of([entry_hash(doc, received, seals or {}) for doc, seals, received in rows]) == root
    # Personal values are sealed: each has its salt beside it, none enters the leaf as itself.
    assert set(rows[0][1]) == {"/actor/email", "/actor/name"}
    report = _verify(logged, witness=witness)
    assert report.ok, report.lines()
    assert (report.events_checked, report.tree_size, report.checkpoints_checked, report.witnessed_checked) == (
        EVENTS,
        EVENTS,
        1,
        1,
    )


def test_the_checkpoint_is_a_signed_c2sp_checkpoint_served_with_its_key(logged: RunningCollector) -> None:
    headers = {"Authorization": f"Bearer {token(logged.conninfo, 'acme')}"}
    note = requests.get(logged.api_url + "/v1/log/checkpoint", headers=headers, timeout=30)
    keys = requests.get(logged.api_url + "/v1/log/key", headers=headers, timeout=30)
    assert note.status_code == 200 and keys.status_code == 200, note.text + keys.text
    vkey = keys.text.splitlines()[0]
    opened = open_note(note.text, [parse_verifier_key(vkey)])
    checkpoint = parse_checkpoint(opened.text)
    assert checkpoint.origin == _keys(logged).origin("acme") and checkpoint.origin.endswith("/acme")
    assert checkpoint.size == EVENTS  # the API's own session event comes after the checkpoint
    assert vkey.startswith(checkpoint.origin + "+")
    # globex's token sees globex's checkpoint, never acme's.
    other = requests.get(
        logged.api_url + "/v1/log/checkpoint", headers={"Authorization": f"Bearer {token(logged.conninfo, 'globex')}"}, timeout=30
    )
    assert parse_checkpoint(other.text.split("\n\n")[0] + "\n").origin.endswith("/globex")


def test_an_inclusion_proof_ties_an_event_to_the_signed_checkpoint(logged: RunningCollector) -> None:
    headers = {"Authorization": f"Bearer {token(logged.conninfo, 'acme')}"}
    event_id = _event_at(logged.conninfo, 123)
    detail = requests.get(f"{logged.api_url}/v1/events/{event_id}", headers=headers, timeout=30).json()
    assert detail["log"]["leaf_index"] == 122 and detail["log"]["in_log"] is True
    answer = requests.get(f"{logged.api_url}/v1/events/{event_id}/proof", headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    proof = answer.json()
    # Recompute the leaf from the event as the API shows it: its document, received_at and seals.
    doc = {k: v for k, v in detail.items() if k not in ("seq", "received_at", "log")}
    leaf = entry_hash(doc, detail["received_at"], detail["log"]["seals"])
    assert base64.b64decode(proof["leaf_hash"]) == leaf == merkle.leaf_hash(base64.b64decode(proof["entry"]))
    checkpoint = parse_checkpoint(open_note(proof["checkpoint"], [parse_verifier_key(proof["key"])]).text)
    merkle.verify_inclusion(leaf, 122, checkpoint.size, [base64.b64decode(h) for h in proof["proof"]], checkpoint.root)
    # Against a checkpoint named by its size; one too small to hold the event has no proof of it.
    sized = requests.get(f"{logged.api_url}/v1/events/{event_id}/proof", params={"size": EVENTS}, headers=headers, timeout=30)
    assert sized.status_code == 200 and sized.json()["proof"] == proof["proof"]
    small = requests.get(f"{logged.api_url}/v1/events/{event_id}/proof", params={"size": 5}, headers=headers, timeout=30)
    assert small.status_code == 404 and "no checkpoint of size 5" in small.json()["message"]
    # The same as a C2SP tlog-proof, its extra line the entry.
    text = requests.get(
        f"{logged.api_url}/v1/events/{event_id}/proof", params={"format": "tlog-proof"}, headers=headers, timeout=30
    ).text
    parsed = parse_tlog_proof(text)
    assert parsed.index == 122 and parsed.extra == base64.b64decode(proof["entry"])
    # No personal value is in the entry: only its commitment.
    assert b"user122@acme.test" not in parsed.extra and b"User 122" not in parsed.extra
    # Another tenant's token cannot get a proof of it.
    other = requests.get(
        f"{logged.api_url}/v1/events/{event_id}/proof",
        headers={"Authorization": f"Bearer {token(logged.conninfo, 'globex')}"},
        timeout=30,
    )
    assert other.status_code == 404


def test_consistency_proofs_link_checkpoints(logged: RunningCollector) -> None:
    send(logged.grpc_target, [(_doc(n), None) for n in range(1000, 1050)])
    logged.call(logged.collector.make_checkpoints_now())
    headers = {"Authorization": f"Bearer {token(logged.conninfo, 'acme')}"}
    with psycopg.connect(logged.conninfo) as conn:
        first, second = logdb.all_checkpoints(conn, "acme")[-2:]
    answer = requests.get(
        logged.api_url + "/v1/log/consistency", params={"old": first.size, "new": second.size}, headers=headers, timeout=30
    )
    assert answer.status_code == 200, answer.text
    proof = [base64.b64decode(h) for h in answer.json()["proof"]]
    merkle.verify_consistency(first.size, second.size, first.root, second.root, proof)
    bad = requests.get(logged.api_url + "/v1/log/consistency", params={"old": 0}, headers=headers, timeout=30)
    assert bad.status_code == 400 and "old" in bad.json()["message"]


# -- tampering, pinpointed ---------------------------------------------------------------------


TAMPERING = {
    "a changed value in a document": (
        ["UPDATE events SET doc = jsonb_set(doc, '{details,via}', '\"cli\"') WHERE tenant = 'acme' AND seq = 41"],
        "seq 41",
        "altered",
    ),
    "a changed column": (
        ["UPDATE events SET actor_id = 'mallory' WHERE tenant = 'acme' AND seq = 57"],
        "seq 57",
        "altered column",
    ),
    "a changed personal value": (
        [
            "UPDATE events SET doc = jsonb_set(doc, '{actor,email}', '\"x@evil.test\"'), actor_email = 'x@evil.test'"
            " WHERE tenant = 'acme' AND seq = 60"
        ],
        "seq 60",
        "altered",
    ),
    "a deleted row": (
        [
            "DELETE FROM event_ids WHERE tenant = 'acme' AND id = (SELECT id FROM events WHERE tenant = 'acme' AND seq = 77)",
            "DELETE FROM events WHERE tenant = 'acme' AND seq = 77",
        ],
        "seq 77",
        "removed",
    ),
    "an inserted row": (
        [
            "INSERT INTO events SELECT tenant, seq, id || '-forged', occurred_at, received_at, category, event, outcome,"
            ' actor_type, actor_id, actor_email, target_type, target_id, flags, doc || \'{"reason": "forged"}\', seals'
            " FROM events WHERE tenant = 'acme' AND seq = 90"
        ],
        "seq 90",
        "inserted",
    ),
    "two rows with swapped seq": (
        ["UPDATE events SET seq = CASE seq WHEN 100 THEN 101 ELSE 100 END WHERE tenant = 'acme' AND seq IN (100, 101)"],
        "seq 100",
        "reordered",
    ),
    "a truncated tail": (
        [
            "DELETE FROM event_ids WHERE tenant = 'acme' AND id IN (SELECT id FROM events WHERE tenant = 'acme' AND seq > 290)",
            "DELETE FROM events WHERE tenant = 'acme' AND seq > 290",
        ],
        "seq 291",
        "removed",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_with_sql_is_pinpointed_by_verify(logged: RunningCollector, case: str) -> None:
    statements, where, what = TAMPERING[case]
    assert _verify(logged).ok
    _sql(logged.conninfo, *statements)
    report = _verify(logged)
    assert not report.ok
    assert report.first_event_problem is not None and report.first_event_problem.startswith(where + " "), report.lines()
    assert f"({what})" in report.first_event_problem, report.lines()
    if what in ("altered", "reordered"):  # the content of the tree changed: the checkpoint no longer matches
        assert any("stored checkpoint" in p and "another root" in p for p in report.problems), report.lines()
    # The command says the same and exits 1.
    done = otaudit("verify", "--tenant", "acme", "--no-progress", env={"OTAUDIT_DATABASE_URL": logged.conninfo})
    assert done.returncode == 1 and where in done.stdout and "ALTERED" in done.stdout, done.stdout + done.stderr
    assert "tenant globex: OK" in otaudit("verify", "--no-progress", env={"OTAUDIT_DATABASE_URL": logged.conninfo}).stdout


def test_a_truncated_tree_with_its_tiles_rewritten_is_caught_by_its_checkpoints(logged: RunningCollector) -> None:
    # The attacker removes the last ten events and makes the log agree: tiles rebuilt for 290 leaves.
    _sql(
        logged.conninfo,
        "DELETE FROM event_ids WHERE tenant = 'acme' AND id IN (SELECT id FROM events WHERE tenant = 'acme' AND seq > 290)",
        "DELETE FROM events WHERE tenant = 'acme' AND seq > 290",
        "DELETE FROM log_tiles WHERE tenant = 'acme'",
        "UPDATE tenant_seq SET last_seq = 290, log_size = 0 WHERE tenant = 'acme'",
    )
    assert logdb.catch_up(logged.conninfo, "acme") == 290
    report = _verify(logged)
    assert report.first_event_problem is None  # rows and tiles now agree with each other
    assert any("truncated" in p for p in report.problems), report.lines()


def test_a_rewritten_tree_resigned_with_another_key_is_caught_by_the_witness_and_the_published_key(
    logged: RunningCollector, witness: Path
) -> None:
    keys = _keys(logged)
    published = keys.signer("acme").verifier().vkey()
    # Alter an event, rebuild every tile from the rows, and sign new checkpoints with a key of one's own.
    _sql(
        logged.conninfo,
        "UPDATE events SET doc = jsonb_set(doc, '{details,via}', '\"forged\"') WHERE tenant = 'acme' AND seq = 12",
        "DELETE FROM log_tiles WHERE tenant = 'acme'",
        "DELETE FROM log_checkpoints WHERE tenant = 'acme'",
        "UPDATE tenant_seq SET log_size = 0 WHERE tenant = 'acme'",
    )
    logdb.catch_up(logged.conninfo, "acme")
    forger = LogKeys(keys.deployment, generate_signer("x").private_key)
    assert make_checkpoints(logged.conninfo, forger, Witnesses()) == ["acme"]
    # Rows, tiles and the (forged) checkpoints agree with each other: only trust from outside catches it.
    assert _verify(logged, trusted=forger.verifiers("acme")).ok
    by_key = _verify(logged, trusted=[parse_verifier_key(published)])
    assert any("does not verify with a trusted key" in p for p in by_key.problems), by_key.lines()
    by_witness = _verify(logged, witness=witness, trusted=forger.verifiers("acme") + keys.verifiers("acme"))
    assert any("witnessed checkpoint" in p and "another root" in p for p in by_witness.problems), by_witness.lines()
    done = otaudit(
        "verify",
        "--tenant",
        "acme",
        "--key",
        published,
        "--witness-dir",
        str(witness),
        "--no-progress",
        env={"OTAUDIT_DATABASE_URL": logged.conninfo},
    )
    assert done.returncode == 1 and "witnessed checkpoint" in done.stdout, done.stdout + done.stderr


def test_the_collector_refuses_to_sign_a_tree_inconsistent_with_what_it_published(
    logged: RunningCollector, witness: Path
) -> None:
    _sql(
        logged.conninfo,
        "UPDATE log_tiles SET hashes = overlay(hashes placing '\\x00' from 1 for 1) WHERE tenant = 'acme' AND level = 1 AND idx = 0",
    )
    send(logged.grpc_target, [(_doc(n), None) for n in range(2000, 2010)])
    assert "acme" not in logged.call(logged.collector.make_checkpoints_now())
    with psycopg.connect(logged.conninfo) as conn:
        assert [c.size for c in logdb.all_checkpoints(conn, "acme")] == [EVENTS]


# -- erasure-readiness, retention, catching up ---------------------------------------------------


def test_erasing_a_personal_value_and_its_salt_keeps_every_proof_valid(logged: RunningCollector) -> None:
    with psycopg.connect(logged.conninfo, autocommit=True) as conn:
        doc, seals = conn.execute("SELECT doc, seals FROM events WHERE tenant = 'acme' AND seq = 33").fetchone()  # type: ignore[misc]
        for pointer in list(seals):
            doc, seals = erase(doc, seals, pointer)
        conn.execute(
            "UPDATE events SET doc = %s, seals = %s, actor_email = NULL WHERE tenant = 'acme' AND seq = 33",
            (json.dumps(doc), json.dumps(seals)),
        )
    assert "user33@acme.test" not in json.dumps(doc) and all("salt" not in s for s in seals.values())
    # The column the erasure cleared is reported as not matching the document: erasure must
    # clear both (a later issue); here it is the document that matters, and the leaf is kept.
    report = _verify(logged)
    assert report.first_event_problem is None or "altered column" in report.first_event_problem, report.lines()
    assert not report.problems, report.lines()
    headers = {"Authorization": f"Bearer {token(logged.conninfo, 'acme')}"}
    proof = requests.get(f"{logged.api_url}/v1/events/{_event_at(logged.conninfo, 33)}/proof", headers=headers, timeout=30)
    assert proof.status_code == 200 and proof.json()["verified"] is True, proof.text


def test_with_the_log_off_events_are_stored_and_the_log_catches_up_when_it_is_on(db: str) -> None:
    off = RunningCollector(settings_for(db, {("integrity", "enabled"): False}))
    try:
        send(off.grpc_target, [(_doc(n), None) for n in range(40)])
    finally:
        off.stop()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT log_size, last_seq FROM tenant_seq WHERE tenant = 'acme'").fetchone() == (0, 40)
        assert conn.execute("SELECT count(*) FROM events WHERE seals IS NOT NULL").fetchone() == (0,)
    on = RunningCollector(settings_for(db, {("integrity", "catch_up_seconds"): 0.1}))
    try:
        from support import wait_until

        wait_until(lambda: logdb.log_state(psycopg.connect(db, autocommit=True), "acme").size == 40, 30, "the log to catch up")
        send(on.grpc_target, [(_doc(n), None) for n in range(40, 50)])
        on.call(on.collector.make_checkpoints_now())
        report = verify_tenant(db, "acme", _keys(on).verifiers("acme"))
        assert report.ok and report.tree_size == 50, report.lines()
        with psycopg.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM events WHERE seals IS NULL").fetchone() == (0,)
    finally:
        on.stop()


def test_events_removed_by_retention_are_reported_as_pruned(logged: RunningCollector) -> None:
    from otaudit_collector.storage.retention import run_retention

    _sql(
        logged.conninfo,
        "SELECT otaudit_ensure_partition(now() - interval '400 days')",
        "UPDATE events SET occurred_at = occurred_at - interval '400 days'"
        " WHERE tenant = 'acme' AND seq <= 20",  # older than basic's 365 days
    )
    # The dedup keys follow (retention deletes by time); the tree is untouched.
    _sql(
        logged.conninfo,
        "UPDATE event_ids k SET occurred_at = e.occurred_at FROM events e WHERE e.tenant = k.tenant AND e.id = k.id",
    )
    report = run_retention(logged.conninfo, logged.settings, trigger="command")
    assert report.rows_deleted >= 20
    verified = _verify(logged)
    assert verified.pruned == 20 and verified.first_event_problem is None, verified.lines()
    with psycopg.connect(logged.conninfo) as conn:
        (run,) = conn.execute("SELECT id FROM retention_runs ORDER BY id DESC LIMIT 1").fetchone()  # type: ignore[misc]
    assert f"20 by retention run {run}" in "\n".join(verified.lines())


def test_keys_come_from_the_environment_never_into_the_log(db: str, tmp_path: Path) -> None:
    signer = generate_signer("ignored")
    seed = signer.skey()
    settings = settings_for(db, {("integrity", "signing_key"): seed, ("integrity", "deployment"): "audit.example.com"})
    keys = load_log_keys(settings, db)
    assert keys.signer("acme").public_key == signer.public_key
    assert keys.origin("acme") == "audit.example.com/acme"
    assert seed not in repr(keys)
    path = tmp_path / "signing.key"
    made = load_log_keys(settings_for(db, {("integrity", "signing_key_file"): str(path)}), db)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (
        load_log_keys(settings_for(db, {("integrity", "signing_key_file"): str(path)}), db).signer("t").public_key
        == made.signer("t").public_key
    )
    stored = load_log_keys(settings_for(db), db)
    assert load_log_keys(settings_for(db), db).signer("t").public_key == stored.signer("t").public_key  # kept in the database


# -- concurrency ---------------------------------------------------------------------------------


def test_two_collectors_and_several_clients_write_one_tenant_and_every_checkpoint_agrees(db: str) -> None:
    import threading

    settings = settings_for(db, {("integrity", "checkpoint_seconds"): 0.1})
    first, second = RunningCollector(settings), RunningCollector(settings)
    try:
        errors: list[BaseException] = []

        def client(number: int) -> None:
            try:
                for batch in range(8):
                    target = (first if (number + batch) % 2 else second).grpc_target
                    base = number * 10_000 + batch * 100
                    send(target, [(_doc(n), None) for n in range(base, base + 40)])
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                errors.append(exc)

        clients = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join(120)
        assert not errors, errors
        first.call(first.collector.make_checkpoints_now())
        report = verify_tenant(db, "acme", _keys(first).verifiers("acme"))
        # The tree, its tiles and every checkpoint signed while both collectors wrote agree with the rows.
        assert report.ok, report.lines()
        assert report.events_checked == report.tree_size == 4 * 8 * 40
        assert report.checkpoints_checked >= 2, report.lines()
        assert _keys(second).verifiers("acme") == _keys(first).verifiers("acme")  # one key, from the database
    finally:
        first.stop()
        second.stop()


def test_verify_through_the_api_checks_what_the_tenants_token_can(logged: RunningCollector, witness: Path) -> None:
    env = {"OTAUDIT_TOKEN": token(logged.conninfo, "acme")}
    args = ("verify", "--url", logged.api_url, "--witness-dir", str(witness), "--no-progress")
    done = otaudit(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tenant acme: OK" in done.stdout and "1 witnessed" in done.stdout
    _sql(logged.conninfo, "UPDATE events SET doc = jsonb_set(doc, '{details,via}', '\"cli\"') WHERE tenant = 'acme' AND seq = 41")
    altered = otaudit(*args, env=env)
    assert altered.returncode == 1 and "seq 41" in altered.stdout, altered.stdout + altered.stderr
    _sql(
        logged.conninfo,
        "UPDATE events SET doc = jsonb_set(doc, '{details,via}', '\"api\"') WHERE tenant = 'acme' AND seq = 41",
        "UPDATE log_tiles SET hashes = overlay(hashes placing '\\xff' from 1 for 1) WHERE tenant = 'acme' AND level = 0 AND idx = 0",
    )
    tiles = otaudit(*args, env=env)
    # Leaf 0's hash no longer gives the level-1 tile above it (nor the signed root).
    assert tiles.returncode == 1 and "tile tile/1/000.p/1 does not hold the hashes" in tiles.stdout, tiles.stdout + tiles.stderr


# -- keys and witnesses ------------------------------------------------------------------------


def test_a_rotated_key_keeps_earlier_checkpoints_verifiable(db: str) -> None:
    old_key, new_key = generate_signer("x"), generate_signer("x")
    first = RunningCollector(settings_for(db, {("integrity", "signing_key"): old_key.skey()}))
    try:
        send(first.grpc_target, [(_doc(n), None) for n in range(10)])
        first.call(first.collector.make_checkpoints_now())
        old_vkey = _keys(first).signer("acme").verifier().vkey()
    finally:
        first.stop()
    # The operator rotates: a new signing key, the old one's verifier key trusted.
    second = RunningCollector(
        settings_for(db, {("integrity", "signing_key"): new_key.skey(), ("integrity", "trusted_keys"): [old_vkey]})
    )
    try:
        send(second.grpc_target, [(_doc(n), None) for n in range(10, 20)])
        second.call(second.collector.make_checkpoints_now())
        keys = _keys(second)
        report = verify_tenant(db, "acme", keys.verifiers("acme"))
        assert report.ok and report.checkpoints_checked == 2, report.lines()
        served = requests.get(
            second.api_url + "/v1/log/key", headers={"Authorization": f"Bearer {token(db, 'acme')}"}, timeout=30
        ).text.splitlines()
        assert served == [keys.signer("acme").verifier().vkey(), old_vkey]  # the current key first
        # Without the old key trusted, its checkpoint is reported, not silently accepted.
        alone = verify_tenant(db, "acme", [keys.signer("acme").verifier()])
        assert any("size 10:" in p and "trusted key" in p for p in alone.problems), alone.lines()
    finally:
        second.stop()


def test_each_new_checkpoint_is_posted_to_a_tlog_witness_with_its_consistency_proof(db: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[str] = []

    class Witness(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append(body)
            self.send_response(200 if self.path == "/w/add-checkpoint" else 404)
            self.end_headers()
            self.wfile.write(b"\xe2\x80\x94 witness.example AAAA\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Witness)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    running = RunningCollector(settings_for(db, {("integrity", "witness_urls"): [f"http://127.0.0.1:{server.server_port}/w"]}))
    try:
        send(running.grpc_target, [(_doc(n), None) for n in range(5)])
        running.call(running.collector.make_checkpoints_now())
        send(running.grpc_target, [(_doc(n), None) for n in range(5, 300)])
        running.call(running.collector.make_checkpoints_now())
    finally:
        running.stop()
        server.shutdown()
    assert len(received) == 2
    # C2SP tlog-witness: "old N", the consistency proof from N, a blank line, the signed checkpoint.
    first_head, first_note = received[0].split("\n\n", 1)
    assert first_head == "old 0" and parse_checkpoint(first_note.split("\n\n")[0] + "\n").size == 5
    head, note = received[1].split("\n\n", 1)
    old_line, *proof = head.split("\n")
    assert old_line == "old 5"
    new = parse_checkpoint(note.split("\n\n")[0] + "\n")
    old = parse_checkpoint(first_note.split("\n\n")[0] + "\n")
    merkle.verify_consistency(5, new.size, old.root, new.root, [base64.b64decode(h) for h in proof])


def test_serve_prints_the_public_key_and_never_the_signing_key(db: str, tmp_path: Path) -> None:
    from support import CollectorProcess

    signer = generate_signer("x")
    ports = ["0", "0", "0"]
    args = ["serve", "--database-url", db, "--grpc-port", ports[0], "--http-port", ports[1], "--api-port", ports[2]]
    proc = CollectorProcess(args, env={"OTAUDIT_SIGNING_KEY": signer.skey(), "OTAUDIT_LOG_LEVEL": "debug"}, cwd=tmp_path).start()
    try:
        send(proc.grpc_target, [(_doc(n), None) for n in range(3)])
    finally:
        assert proc.terminate() == 0
    output = "".join(proc.output)
    public = base64.b64encode(signer.public_key).decode()
    assert f"signed by Ed25519 key {public}" in output and "OTAUDIT_SIGNING_KEY" in output
    seed = signer.skey().rsplit("+", 1)[1]
    assert signer.skey() not in output and seed not in output and seed[2:20] not in output


def test_an_event_appended_around_the_log_is_not_proven(logged: RunningCollector) -> None:
    # A row after the last one, and the sequence moved on as if the collector had stored it.
    _sql(
        logged.conninfo,
        "INSERT INTO events SELECT tenant, seq + 1, id || '-forged', occurred_at, received_at, category, event, outcome,"
        " actor_type, actor_id, actor_email, target_type, target_id, flags, doc, seals"
        f" FROM events WHERE tenant = 'acme' AND seq = {EVENTS}",
        "UPDATE tenant_seq SET last_seq = last_seq + 1 WHERE tenant = 'acme'",
    )
    report = _verify(logged)
    assert not report.ok and report.behind == 1 and report.first_event_problem is None
    assert "nothing proves them" in "\n".join(report.lines())


def test_a_checkpoint_the_witness_folder_cannot_take_is_not_kept_and_is_signed_again(db: str, tmp_path: Path) -> None:
    blocked = tmp_path / "witness"
    blocked.write_text("a file where the folder should be")
    running = RunningCollector(settings_for(db, {("integrity", "witness_dir"): str(blocked)}))
    try:
        send(running.grpc_target, [(_doc(n), None) for n in range(3)])
        assert running.call(running.collector.make_checkpoints_now()) == []
        with psycopg.connect(db) as conn:
            assert logdb.all_checkpoints(conn, "acme") == []  # never kept unpublished
        blocked.unlink()
        assert running.call(running.collector.make_checkpoints_now()) == ["acme"]
        keys = _keys(running)
        assert [size for size, _ in Witnesses(str(blocked)).published(keys.origin("acme"))] == [3]
    finally:
        running.stop()
