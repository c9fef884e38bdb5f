"""The collector's logs: one JSON object per line, at the configured level, and never a
token, a database password, the token pepper or an event's personal fields, whatever
happens (good and bad events, wrong tokens, reads, an export, a stop)."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import psycopg
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support import CollectorProcess, good_attributes, record, request

from otaudit_collector.core.tokens import parse_token
from otaudit_collector.storage import access

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PEPPER = "pepper-marker-6f1c2a9e-not-for-logs"
PASSWORD = "Pa55word-marker-93ad"
# The personal and free-text fields of the events sent: none may reach a log line.
PERSONAL = {
    "user.email": "jane.marker@acme.test",
    "user.name": "Jane Markerson",
    "client.address": "198.51.100.77",
    "user_agent.original": "MarkerAgent/9.9",
    "session.id": "session-marker-4711",
    "audit.target.name": "Marker Group",
}


def test_logs_are_json_lines_without_secrets_or_personal_fields(db: str, tmp_path: Path) -> None:
    with psycopg.connect(db) as conn:
        admin = access.create_token(conn, tenant="acme", role="admin", name="ann", pepper=PEPPER)[1]
        ingest = access.create_token(conn, tenant="acme", role="ingest", name="accounts-api", pepper=PEPPER)[1]
        revoked = access.create_token(conn, tenant="acme", role="ingest", name="old", pepper=PEPPER)[1]
        assert access.revoke_token(conn, revoked)
    # Trust authentication ignores the password, but the collector is given it all the same.
    url = make_conninfo(db, password=PASSWORD)
    assert PASSWORD in url and conninfo_to_dict(url)["password"] == PASSWORD
    proc = CollectorProcess(
        ["serve", "--database-url", url, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"],
        env={"OTAUDIT_TOKEN_PEPPER": PEPPER, "OTAUDIT_LOG_LEVEL": "debug", "OTAUDIT_REQUIRE_INGEST_TOKEN": "true"},
        cwd=tmp_path,
    ).start()
    api = f"http://127.0.0.1:{proc.ports['API']}"
    try:
        good = record("updateRole", good_attributes(**{k.replace(".", "__"): v for k, v in PERSONAL.items()}))
        # Invalid: an email that is not one, a role list that is a number; the rule messages
        # go back to the client, not to the log.
        bad = record("updateRole", good_attributes(user__email="not-an-email " + PERSONAL["user.email"], user__roles=7))
        with grpc.insecure_channel(proc.grpc_target) as channel:
            call = channel.unary_unary(EXPORT)
            answer = call(request([good, bad]).SerializeToString(), metadata=[("authorization", f"Bearer {ingest}")], timeout=30)
            assert answer, "a partial success names the rejected record"
            altered = ingest[:-1] + ("x" if ingest[-1] != "x" else "y")  # the right id, a wrong secret
            for wrong in (revoked, admin, altered, "otaudit_not-a-token"):
                try:
                    call(request([good]).SerializeToString(), metadata=[("authorization", f"Bearer {wrong}")], timeout=30)
                    raise AssertionError(f"a wrong token was accepted: {wrong[:12]}")
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
        http = requests.post(
            f"http://127.0.0.1:{proc.ports['OTLP/HTTP']}/v1/logs",
            data=request([good]).SerializeToString(),
            headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {revoked}"},
            timeout=30,
        )
        assert http.status_code == 401
        headers = {"Authorization": f"Bearer {admin}"}
        page = requests.get(f"{api}/v1/events", headers=headers, timeout=30).json()
        assert any(e.get("actor", {}).get("email") == PERSONAL["user.email"] for e in page["events"])
        assert requests.get(f"{api}/v1/events", headers={"Authorization": f"Bearer {ingest}"}, timeout=30).status_code == 403
        assert requests.get(f"{api}/v1/events", headers={"Authorization": f"Bearer {revoked}"}, timeout=30).status_code == 401
        exported = requests.get(f"{api}/v1/export", params={"format": "csv"}, headers=headers, timeout=60)
        assert exported.status_code == 200 and PERSONAL["user.name"] in exported.text
    finally:
        assert proc.terminate() == 0
    output = "".join(proc.output)
    # Everything but the banner (stdout, for a person) is a log line (stderr).
    start = next(i for i, line in enumerate(proc.output) if line.startswith("otaudit collector is ready"))
    end = next(i for i, line in enumerate(proc.output) if line.startswith("Send events"))
    logs = [line for line in proc.output[:start] + proc.output[end + 1 :] if line.strip()]
    assert logs, "the collector logged something at debug level"
    for line in logs:
        entry = json.loads(line)  # one JSON object per line
        assert {"time", "level", "logger", "message"} <= entry.keys()
    secrets = {"admin token": admin, "ingest token": ingest, "revoked token": revoked, "pepper": PEPPER, "password": PASSWORD}
    for what, value in {**secrets, **PERSONAL}.items():
        assert value not in output, f"the {what} appears in the collector's output"
    for token in (admin, ingest, revoked):
        parsed = parse_token(token)
        assert parsed is not None and parsed[1] not in output, "no token secret, even without its prefix"
