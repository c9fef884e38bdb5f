"""Delivery of streams against a real PostgreSQL, real collectors and a real webhook receiver:
in seq order, at-least-once, nothing skipped, through a receiver that is down for a while, a
pause, a plan change, filters, backfills, and a second collector taking over."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psycopg
import requests
from stream_helpers import INVENTORY, Api, ingest, quick_settings, set_plan, token
from stream_receiver import Receiver
from support import CollectorProcess, RunningCollector, rows, wait_until

BASIC = ("site_access", "accounts_configuration", "data_extraction")


def head(conninfo: str, tenant: str = "acme") -> int:
    found = rows(conninfo, "SELECT last_seq FROM tenant_seq WHERE tenant = %s", (tenant,))
    return int(found[0]["last_seq"]) if found else 0


def stored(conninfo: str, after: int, categories: tuple[str, ...] | None = None) -> list[int]:
    """The seqs of acme's events after ``after``, of ``categories`` (None: all)."""
    found = rows(conninfo, "SELECT seq, category FROM events WHERE tenant = 'acme' AND seq > %s ORDER BY seq", (after,))
    return [r["seq"] for r in found if categories is None or r["category"] in categories]


def caught_up(api: Api, stream_id: str, conninfo: str) -> bool:
    return bool(api.get(stream_id)["cursor"] == head(conninfo))


def first_seen(seqs: list[int]) -> list[int]:
    seen: set[int] = set()
    return [s for s in seqs if not (s in seen or seen.add(s))]  # type: ignore[func-returns-value]


def webhook(api: Api, receiver: Receiver, **body: Any) -> dict[str, Any]:
    """A webhook stream to ``receiver``, which then checks every delivery's signature."""
    made = api.create(url=receiver.url, **{"name": "siem", **body})
    receiver.secret = made["secret"]
    return made


def test_a_receiver_down_under_steady_ingest_gets_every_event_in_order_once_back(
    running: RunningCollector, receiver: Receiver
) -> None:
    api = Api(running, token(running.conninfo))
    made = webhook(api, receiver)
    start = made["cursor"]
    stop = threading.Event()

    def steady() -> None:
        while not stop.is_set():
            ingest(running, 2)
            time.sleep(0.02)

    sender = threading.Thread(target=steady, daemon=True)
    sender.start()
    try:
        wait_until(lambda: len(receiver.seqs()) >= 10, 30, "the first deliveries")
        receiver.status = 503
        wait_until(lambda: len(receiver.refused) >= 3, 30, "the receiver to refuse a few attempts")
        # Meanwhile the failure is visible: the receiver's words, the lag, in the API and /metrics.
        seen = api.get(made["id"])
        assert seen["state"] == "active" and seen["attempts"] >= 1 and seen["failed"] >= 1
        assert "503" in seen["last_error"] and "down for maintenance" in seen["last_error"]
        wait_until(lambda: api.get(made["id"])["lag_events"] > 0, 30, "a lag")
        assert api.get(made["id"])["lag_seconds"] >= 0
        metrics = requests.get(running.api_url + "/metrics", timeout=30).text
        labels = f'stream="{made["id"]}",tenant="acme"'
        assert f"otaudit_stream_failed_total{{{labels}}}" in metrics
        assert f'otaudit_stream_state{{state="retrying",{labels}}} 1.0' in metrics
        assert f"otaudit_stream_lag_events{{{labels}}}" in metrics
        receiver.status = 200
        wait_until(lambda: len(receiver.batches) > 0 and api.get(made["id"])["attempts"] == 0, 30, "the recovery")
    finally:
        stop.set()
        sender.join(30)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 60, "the stream to catch up")
    delivered = receiver.seqs()
    assert delivered == stored(running.conninfo, start)  # every event, in seq order, no gap, none twice taken
    # Each refused attempt was the same batch, the one in flight at the failure, and it came through first.
    refused = [[r["seq"] for r in batch] for batch in receiver.refused]
    assert all(batch == refused[0] for batch in refused)
    taken = [[r["seq"] for r in batch] for batch in receiver.batches]
    assert refused[0] in taken
    assert receiver.bad_signatures == 0
    health = api.get(made["id"])
    assert health["delivered"] == len(delivered) and health["last_success_at"] is not None
    assert health["lag_events"] == 0 and health["last_error"] is not None  # the last error stays for the record
    assert all(set(r) >= {"id", "seq", "tenant", "category", "event"} for r in receiver.records())


def test_pause_keeps_the_cursor_and_resume_loses_nothing(running: RunningCollector, receiver: Receiver) -> None:
    api = Api(running, token(running.conninfo))
    made = webhook(api, receiver)
    ingest(running, 5)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "delivery")
    paused = api.call("POST", f"/v1/streams/{made['id']}/pause").json()
    assert paused["state"] == "paused"
    ingest(running, 7)
    seen = api.get(made["id"])
    assert seen["state"] == "paused" and seen["cursor"] == paused["cursor"] and seen["lag_events"] >= 7
    resumed = api.call("POST", f"/v1/streams/{made['id']}/resume").json()
    assert resumed["state"] == "active" and resumed["cursor"] == paused["cursor"]
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "delivery after the resume")
    assert receiver.seqs() == stored(running.conninfo, made["cursor"])


def test_a_read_connection_cut_mid_stream_loses_nothing(running: RunningCollector, receiver: Receiver) -> None:
    """A stream reads its batches on a blocking connection of its own (``otaudit-stream-read``):
    cut by the server, the delivery is claimed again on a new one, nothing skipped or repeated."""
    api = Api(running, token(running.conninfo))
    made = webhook(api, receiver)
    ingest(running, 5)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "delivery")
    cut = rows(
        running.conninfo,
        "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE application_name = 'otaudit-stream-read'",
    )
    assert cut and all(r["done"] for r in cut), "the stream reads on a connection of its own"
    ingest(running, 7)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 60, "delivery on a new connection")
    assert receiver.seqs() == stored(running.conninfo, made["cursor"]), "every event once, in order"
    assert (
        rows(running.conninfo, "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'otaudit-stream-read'")[0][
            "n"
        ]
        == 1
    )


def test_claims_keep_one_connection_from_poll_to_poll(running: RunningCollector) -> None:
    """Polling for due streams (every poll_seconds, 0.05 s here) reuses its connection instead of
    starting a PostgreSQL backend each time."""

    def claim_pids() -> list[int]:
        found = rows(running.conninfo, "SELECT pid FROM pg_stat_activity WHERE application_name = 'otaudit-stream-claim'")
        return [r["pid"] for r in found]

    wait_until(lambda: len(claim_pids()) == 1, 30, "the claim connection")
    first = claim_pids()
    time.sleep(1.0)  # some twenty polls
    assert claim_pids() == first


def test_the_plan_limits_delivery_and_a_plan_change_applies(running: RunningCollector, receiver: Receiver) -> None:
    api = Api(running, token(running.conninfo))
    made = webhook(api, receiver)  # basic: no inventory_configuration
    ingest(running, 3, category=INVENTORY)
    ingest(running, 2)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "delivery")
    assert {r["category"] for r in receiver.records()} <= set(BASIC)
    upgraded = head(running.conninfo)
    set_plan(running.conninfo, "acme", "pro")
    later = ingest(running, 2, category=INVENTORY)
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "delivery after the upgrade")
    delivered = receiver.records()
    assert [r["id"] for r in delivered if r["category"] == INVENTORY] == later  # only those after the change
    before = [seq for seq in stored(running.conninfo, made["cursor"], BASIC) if seq <= upgraded]
    assert [r["seq"] for r in delivered] == before + stored(running.conninfo, upgraded)


def test_a_filter_delivers_only_its_events_and_passes_over_the_rest(running: RunningCollector, receiver: Receiver) -> None:
    api = Api(running, token(running.conninfo))
    made = webhook(api, receiver, filter={"category": ["site_access"], "q": "event:siteAccess"})
    logins = ingest(running, 3, category="site_access")
    ingest(running, 4)
    more = ingest(running, 1, category="site_access")
    wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "the cursor to pass over the rest")
    assert [r["id"] for r in receiver.records() if r["details"].get("method") == "sso"] == logins + more
    assert {r["category"] for r in receiver.records()} == {"site_access"}  # the API's own sessions too


def test_backfill_from_a_seq_and_from_a_time(running: RunningCollector, receiver: Receiver) -> None:
    admin = token(running.conninfo)
    api = Api(running, admin)
    ingest(running, 6)
    fourth = rows(running.conninfo, "SELECT received_at FROM events WHERE tenant = 'acme' AND seq = 4")[0]["received_at"]
    from_seq = webhook(api, receiver, name="from-seq", start={"seq": 3})
    assert from_seq["cursor"] == 2
    wait_until(lambda: caught_up(api, from_seq["id"], running.conninfo), 30, "the backfill from seq 3")
    assert receiver.seqs() == stored(running.conninfo, 2)
    other = Receiver()
    try:
        made = api.create(name="from-time", url=other.url, start={"time": fourth.isoformat()})
        other.secret = made["secret"]
        first = rows(running.conninfo, "SELECT min(seq) AS s FROM events WHERE tenant = 'acme' AND received_at >= %s", (fourth,))
        assert made["cursor"] == first[0]["s"] - 1
        wait_until(lambda: caught_up(api, made["id"], running.conninfo), 30, "the backfill from a time")
        assert other.seqs() == stored(running.conninfo, made["cursor"])
    finally:
        other.stop()
    too_far = api.call("POST", "/v1/streams", {"name": "x", "url": receiver.url, "start": {"seq": head(running.conninfo) + 5}})
    assert too_far.status_code == 400 and "start.seq" in too_far.json()["message"]


def test_two_collectors_deliver_a_stream_one_at_a_time_and_one_takes_over(db: str, receiver: Receiver) -> None:
    first = RunningCollector(quick_settings(db))
    second = RunningCollector(quick_settings(db))
    try:
        api = Api(first, token(db))
        made = webhook(api, receiver)
        ingest(first, 4)
        ingest(second, 4)
        wait_until(lambda: caught_up(api, made["id"], db), 30, "delivery")
        assert receiver.seqs() == stored(db, made["cursor"])  # none twice: one collector at a time
        with psycopg.connect(db) as conn:
            found = conn.execute("SELECT lease_owner FROM streams WHERE id = %s", (made["id"],)).fetchone()
        assert found is not None and found[0] is not None
        holder, other = (first, second) if found[0] == first.collector.streams.owner else (second, first)
        assert found[0] == holder.collector.streams.owner
        holder.stop()
        ingest(other, 5)
        other_api = Api(other, token(db))
        wait_until(lambda: caught_up(other_api, made["id"], db), 30, "the other collector to take over")
        delivered = receiver.seqs()
        assert first_seen(delivered) == stored(db, made["cursor"])
        assert len(delivered) - len(set(delivered)) <= 10  # repeats: at most the batch in flight at the stop
    finally:
        first.stop()
        second.stop()


def test_a_collector_killed_mid_delivery_is_taken_over_with_nothing_lost(db: str, receiver: Receiver, tmp_path: Path) -> None:
    """The issue's case: the replica delivering a stream is SIGKILLed (no lease given back); once
    its lease runs out another takes the stream over from the cursor, under steady ingest."""
    config = tmp_path / "collector.yaml"
    config.write_text(
        "auth: {token_cache_seconds: 0}\nintegrity: {enabled: false}\ncatalogs: {reload_interval_seconds: 0}\n"
        "streams: {poll_seconds: 0.05, lease_seconds: 2, backoff_max_seconds: 1, batch_records: 10}\n"
    )
    args = ["serve", "--config", str(config), "--database-url", db, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"]
    doomed = CollectorProcess(args, cwd=tmp_path).start()
    survivor: RunningCollector | None = None
    stop = threading.Event()
    try:
        api = Api(SimpleNamespace(api_url=f"http://127.0.0.1:{doomed.ports['API']}"), token(db))  # type: ignore[arg-type]
        made = webhook(api, receiver)
        survivor_settings = quick_settings(db)
        ingest_into = SimpleNamespace(http_url=f"http://127.0.0.1:{doomed.ports['OTLP/HTTP']}/v1/logs")
        ingest(ingest_into, 20)  # type: ignore[arg-type]
        wait_until(lambda: len(receiver.seqs()) >= 10, 30, "the doomed collector to deliver")
        survivor = RunningCollector(survivor_settings)
        owner = rows(db, "SELECT lease_owner FROM streams WHERE id = %s", (made["id"],))[0]["lease_owner"]
        assert owner is not None and owner != survivor.collector.streams.owner, "the doomed collector holds the stream"

        def steady() -> None:
            while not stop.is_set():
                ingest(survivor, 2)  # type: ignore[arg-type]
                time.sleep(0.02)

        sender = threading.Thread(target=steady, daemon=True)
        sender.start()
        wait_until(lambda: len(receiver.seqs()) >= 30, 30, "delivery under ingest")
        doomed.kill()  # SIGKILL: its lease is not given back
        time.sleep(0.5)
        stop.set()
        sender.join(30)
        survivor_api = Api(survivor, token(db))
        wait_until(lambda: caught_up(survivor_api, made["id"], db), 60, "the survivor to take the stream over")
        taken = rows(db, "SELECT lease_owner FROM streams WHERE id = %s", (made["id"],))[0]["lease_owner"]
        assert taken == survivor.collector.streams.owner
        delivered = receiver.seqs()
        assert first_seen(delivered) == stored(db, made["cursor"]), "every event, in seq order, no gap"
        assert len(delivered) - len(set(delivered)) <= 10, "repeats: at most the batch in flight at the kill"
        assert receiver.bad_signatures == 0
    finally:
        stop.set()
        if survivor is not None:
            survivor.stop()
        if doomed.proc is not None and doomed.proc.poll() is None:
            doomed.kill()
