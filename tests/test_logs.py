"""The collector's logs: one JSON object per line, at the configured level, and never a
token, a database password, the token pepper or an event's personal fields, whatever
happens (good and bad events, wrong tokens, reads, an export, a stop)."""

from __future__ import annotations

import io
import json
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
import requests
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from support import CollectorProcess, good_attributes, otaudit, record, request, wait_until

from otaudit_collector.core.tokens import new_token, parse_token
from otaudit_collector.logs import Repeats, setup_logging
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


# -- credentials in malformed requests, and repeated warnings (issue 11) ----------------


def _token_text(db: str, role: str) -> str:
    done = otaudit(
        "token", "create", "--tenant", "acme", "--role", role, "--database-url", db, env={"OTAUDIT_TOKEN_PEPPER": PEPPER}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _serve(db: str, folder: Path, env: dict[str, str] | None = None) -> CollectorProcess:
    """``otaudit serve`` configured by ``folder``/otaudit.yaml, requiring ingest tokens."""
    args = ["serve", "--config", str(folder / "otaudit.yaml"), "--database-url", db]
    return CollectorProcess(
        [*args, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"],
        env={"OTAUDIT_TOKEN_PEPPER": PEPPER, "OTAUDIT_REQUIRE_INGEST_TOKEN": "true", **(env or {})},
        cwd=folder,
    ).start()


def _malformed_requests(token: str) -> list[bytes]:
    """Requests that aiohttp's parser refuses, or that stall, each quoting ``token`` somewhere."""
    ok_head = f"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nAuthorization: Bearer {token}\r\n"
    return [
        f"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}{'A' * 9000}\r\n\r\n".encode(),  # over 8 KiB
        f"POST /v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n".encode(),  # a control byte
        f"POST /v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x00tail\r\n\r\n".encode(),  # NUL
        f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {token}\x7f\r\n\r\n".encode(),  # DEL
        f"GET /healthz HTTP/1.1\r\nAuthorization:\tbearer\t{token}\x0b\r\n\r\n".encode(),
        f"GET /healthz HTTP/1.1\r\nAuthorization: {token}\x1b[0m\r\n\r\n".encode(),  # no scheme, an escape sequence
        f"GET /{token} HTTP/1.1 x\r\nAuthorization: Bearer {token}\r\n\r\n".encode(),  # a broken request line
        f"POST /v1/logs?t={token} HTTP/9.x\r\n\r\n".encode(),
        f"{token} / HTTP/1.1\r\n\r\n".encode(),  # the token as the method
        f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer\r\n {token}\r\n\r\n".encode(),  # obsolete line folding
        f"GET /healthz HTTP/1.1\r\nAuthorization : Bearer {token}\r\n\r\n".encode(),  # a space before the colon
        f"GET /healthz HTTP/1.1\r\n{token}: Bearer {token}\r\nBroken\r\n\r\n".encode(),  # a line without a colon
        (f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {token}\r\n" + f"X-Copy: Bearer {token}\r\n" * 200 + "\r\n").encode(),
        (ok_head + "Transfer-Encoding: chunked\r\n\r\n" + f"zz{token}\r\n").encode(),  # a broken chunk size
        (ok_head + "Transfer-Encoding: chunked\r\n\r\n" + f"5\r\n{token}\r\n0\r\n\r\n").encode(),  # a chunk longer than said
        (ok_head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").encode(),  # both lengths
        (ok_head + f"Content-Length: {token}\r\n\r\n").encode(),
        (ok_head + "Content-Encoding: gzip\r\nContent-Length: 60\r\n\r\n").encode() + token.encode()[:60],  # not gzip
        (ok_head + "Content-Length: 60\r\n\r\n").encode() + token.encode()[:60],  # not protobuf, unknown token
        f"GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode(),  # unknown token: 401
        f"GET /healthz HTTP/1.1\r\nAuthorization: Bearer {token}\r\n".encode(),  # a head never finished
    ]


def _send_raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.settimeout(10)
        try:
            sock.sendall(data)
            while sock.recv(65536):  # until the collector answers and closes, or the header timeout does
                pass
        except OSError:
            pass  # reset, refused, or timed out: what matters is what the collector logged


def test_no_credential_reaches_the_log_however_malformed_the_request(db: str, tmp_path: Path) -> None:
    real = [_token_text(db, "ingest"), _token_text(db, "admin")]
    (tmp_path / "otaudit.yaml").write_text(
        "listen:\n  header_timeout_seconds: 1\n  idle_timeout_seconds: 1\nlogging:\n  repeat_window_seconds: 0\n"
    )
    proc = _serve(db, tmp_path, {"OTAUDIT_LOG_LEVEL": "debug"})
    used: list[str] = []
    try:
        for port in (proc.ports["OTLP/HTTP"], proc.ports["API"]):
            for case in range(len(_malformed_requests("x"))):
                for token in (new_token()[2], *real):
                    used.append(token)
                    _send_raw(port, _malformed_requests(token)[case])
    finally:
        assert proc.terminate() == 0
    output = "".join(proc.output)
    for token in used:
        token_id, secret = parse_token(token) or ("", "")
        assert secret and secret not in output, f"the secret of token {token_id} appears in the collector's output"
    assert "refused a malformed HTTP request" in output, "the refusals are logged, without their bytes"


def _refusals(proc: CollectorProcess) -> list[dict[str, Any]]:
    entries = [json.loads(line) for line in proc.output if line.startswith("{")]
    return [e for e in entries if e["message"] == "OTLP request refused: the ingest token is unknown or revoked"]


def test_a_burst_of_bogus_tokens_leaves_a_few_lines_that_count_the_rest(db: str, tmp_path: Path) -> None:
    window, burst = 2.0, 200
    (tmp_path / "otaudit.yaml").write_text(f"logging:\n  repeat_window_seconds: {window}\n")
    proc = _serve(db, tmp_path)
    url = f"http://127.0.0.1:{proc.ports['OTLP/HTTP']}/v1/logs"
    body = request([record()]).SerializeToString()

    def bogus(session: requests.Session) -> None:
        headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {new_token()[2]}"}
        assert session.post(url, data=body, headers=headers, timeout=30).status_code == 401

    try:
        with requests.Session() as session:
            started = time.monotonic()
            for _ in range(burst):
                bogus(session)
            elapsed = time.monotonic() - started
            wait_until(lambda: len(_refusals(proc)) >= 1, what="the first refusal logged")
            time.sleep(window + 0.5)  # past the window: the next one is logged, with the count
            bogus(session)
            wait_until(lambda: _refusals(proc)[-1].get("suppressed") is not None, timeout=30, what="the count logged")
    finally:
        assert proc.terminate() == 0
    lines = _refusals(proc)
    assert len(lines) <= elapsed / window + 2 and len(lines) < burst / 5, f"{len(lines)} lines for {burst} refusals"
    assert sum(1 + line.get("suppressed", 0) for line in lines) == burst + 1, "each refusal logged or counted, once"
    assert "token_id" in lines[0], "the first one keeps its extras"


def test_repeats_are_logged_once_per_window_then_counted() -> None:
    now = [1000.0]
    repeats = Repeats(60, clock=lambda: now[0])

    def passes(msg: str = "token %s refused", *args: object, level: int = logging.WARNING, name: str = "otaudit.x") -> bool:
        return repeats.filter(logging.makeLogRecord({"name": name, "levelno": level, "msg": msg, "args": args}))

    assert passes("token %s refused", "a1")
    assert not any([passes("token %s refused", f"b{i}") for i in range(5)]), "same template, other arguments: repeats"
    assert passes("another %s", "a"), "another template is another kind"
    assert passes(name="otaudit.other"), "another logger is another kind"
    assert all(passes("state %s", i, level=logging.INFO) for i in range(3)), "info is never limited"
    assert all(passes("boom", level=logging.CRITICAL) for _ in range(3)), "nor critical"
    assert passes("failed", level=logging.ERROR) and not passes("failed", level=logging.ERROR), "errors are"
    now[0] += 59.9
    assert not passes("token %s refused", "c")
    now[0] += 0.2  # the window since the last one logged is over
    record_ = logging.makeLogRecord({"name": "otaudit.x", "levelno": logging.WARNING, "msg": "token %s refused", "args": ("d",)})
    assert repeats.filter(record_) and record_.suppressed == 6
    assert not passes("token %s refused", "e")
    now[0] += 61
    fresh = logging.makeLogRecord({"name": "otaudit.x", "levelno": logging.WARNING, "msg": "token %s refused"})
    assert repeats.filter(fresh) and fresh.suppressed == 1
    now[0] += 61
    quiet = logging.makeLogRecord({"name": "otaudit.x", "levelno": logging.WARNING, "msg": "token %s refused"})
    assert repeats.filter(quiet) and not hasattr(quiet, "suppressed"), "nothing suppressed, nothing said"

    off = Repeats(0, clock=lambda: now[0])
    assert all(off.filter(logging.makeLogRecord({"levelno": logging.WARNING, "msg": "same"})) for _ in range(5))

    bounded = Repeats(60, clock=lambda: now[0], max_kinds=3)
    for i in range(10):
        bounded.filter(logging.makeLogRecord({"levelno": logging.WARNING, "msg": f"varying text {i}"}))
    assert len(bounded._seen) == 3, "kinds remembered are bounded"


def test_the_log_redacts_tokens_in_message_extras_and_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    token_id, secret, token = new_token()
    buffer = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    monkeypatch.setattr(sys, "stderr", buffer)
    try:
        setup_logging("debug", "json", 60)
        log = logging.getLogger("otaudit.test")
        log.warning(
            "refused %s", f"b'Authorization: Bearer {token}\\x01'", extra={"header": {"authorization": f"Bearer {secret}"}}
        )
        try:
            raise ValueError(f"Got more than 8190 bytes when reading: b'Bearer {token}AAAA'")
        except ValueError:
            log.exception("failed with %r", token[:40] + secret[:20])
        log.error("cut short: %s", token[: len(token) - 10], stack_info=True)
        log.info("plain text is kept: Bearer-less mention of otaudit tokens")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    output = buffer.getvalue()
    entries = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert len(entries) == 4 and "exception" in entries[1] and "stack" in entries[2]
    assert secret not in output and secret[:20] not in output and token[: len(token) - 10] not in output
    assert f"otaudit_{token_id}_[redacted]" in entries[0]["message"], "the id stays: it names the token, it is no secret"
    assert entries[0]["header"] == {"authorization": "Bearer [redacted]"}
    assert entries[3]["message"] == "plain text is kept: Bearer-less mention of otaudit tokens"


def test_the_log_redacts_webhook_secrets() -> None:
    from otaudit_collector.core.webhook_signature import new_secret
    from otaudit_collector.logs import redact

    secret = new_secret()
    assert redact(f"a stream made with {secret} for https://siem") == "a stream made with whsec_[redacted] for https://siem"
    assert secret[6:] not in redact(repr({"secret": secret}))
    assert redact("whsec_ alone, and text without one") == "whsec_ alone, and text without one"
