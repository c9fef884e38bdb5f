"""Reading while writing: the feed and the cursor under concurrent ingest, and read-your-ack.

Real clients (the stock OTel OTLP exporters over gRPC and HTTP, the otaudit SDK over
both) send a few thousand events of one tenant at once, more than half of them "late"
(claimed up to half an hour in the past), so that commit order and time order differ.
Meanwhile:

- a poller follows ``GET /v1/feed?after=SEQ`` with ``next_after`` and page sizes that
  vary; every page must continue exactly where the previous one stopped, and once
  ingest has ended and the poller has caught up it must have seen exactly the seqs
  1..N, once each, with exactly the ids stored;
- a pager walks ``GET /v1/events?since=...`` with the cursor, over and over, letting at
  least one more request be acknowledged between two pages: no id twice, newest first,
  and every event committed before the walk began that matches the filter returned;
- each sender, as soon as its export call returns success, reads every id of that
  request with ``GET /v1/events/{id}``: no retry, no wait.

The same again with two collectors (one in this process, one ``otaudit serve``
subprocess) on one database, with the poller alternating between their APIs, each
sender reading its acknowledged events through the other collector, and the same
requests sent to both at once (a retry that reaches two replicas). Before that, a late
commit made deterministic: one collector's transaction is held after it has numbered its
events (a test transaction locks the partition its 100-day-old event goes to) while the
other collector gets a request; the feed, read through either API meanwhile, must not
skip the held seqs. (A writer that numbered events outside its transaction, like a
SEQUENCE, fails this phase every time: seqs 9-12 visible while 5 is not.)

Why the feed cannot show seq 11 while seq 10 is still invisible
----------------------------------------------------------------

The writer numbers a transaction's events with ``INSERT INTO tenant_seq ... ON CONFLICT
DO UPDATE ... RETURNING``: the first statement of the transaction that then COPYs those
events, so the tenant's counter row stays locked until COMMIT. A second transaction for
the tenant (from this collector or any other) blocks on that row until the first one
ends, and ON CONFLICT DO UPDATE then works on the newest committed version of the row:
it numbers its events after the first transaction's, and only once that one has
committed. In PostgreSQL's commit, a transaction leaves the proc array (becomes visible
to every snapshot taken afterwards) before it releases its locks (``CommitTransaction``:
``RecordTransactionCommit``, ``ProcArrayEndTransaction``, then ``ResourceOwnerRelease``
of the locks). So the transaction holding seq 10 is visible before the one that will
hold seq 11 can even take its numbers, hence before that one commits. The feed's
``seq > after ORDER BY seq LIMIT n`` is one statement, and at READ COMMITTED one
statement reads one snapshot; a snapshot that sees seq 11's transaction committed was
taken after it committed, so after seq 10's became visible. The seqs any snapshot sees
are therefore always 1..k, a prefix: a poller never jumps over a late commit, and
``next_after`` (the last seq returned) never passes an event that is not visible yet.
A transaction that rolls back (a unique violation because another collector stored the
same event meanwhile; a lost connection) rolls its counter update back with it, so it
leaves no hole. The conclusion is: no, it cannot.

What the argument rests on, so that a change to any of it must come with this test:
the counter and the events in one transaction (a SEQUENCE would break it: ``nextval``
is not transactional, seq 11 could commit before seq 10 and the poller would skip 10
for good); the lock held until COMMIT (not a lock released before it); reading the
primary, or a hot standby, which makes transactions visible in the order of their
commit records in the WAL (seq 10's precedes seq 11's), so the same holds there.
Asynchronous commit changes durability, not the order of visibility. The feed is
gap-free among what the caller may read: events of categories outside the plan and
events retention deleted are left out; these tests use readable categories only.

The cursor of ``/v1/events`` needs less: ``(occurred_at, seq)`` is a total, immutable
order, each page is one statement whose snapshot includes everything committed before
the walk began, and each page returns the greatest keys below the previous page's
last: an event committed before the walk is on the page that covers its key. Late
events committed during the walk appear if their key is still ahead of the cursor;
nothing ever appears twice.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from support import CollectorProcess, RunningCollector, good_attributes, rows, wait_until

import otaudit_sdk as audit
from otaudit_collector.storage import access
from otaudit_sdk._config import settings_from

TENANT = "acme"
LATE_SECONDS = 1800  # a late event happened up to half an hour before it is sent
WINDOW_SECONDS = 900  # the pager reads the last quarter of an hour
ANN = audit.Actor.user("u-17", email="ann@acme.test", name="Ann", address="203.0.113.9")


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns // 1000 / 1e6, dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def admin_token(db: str) -> str:
    with psycopg.connect(db) as conn:
        return str(access.create_token(conn, tenant=TENANT, role="admin", name="reader", pepper="")[1])


class Api:
    """One reader of the admin API (a keep-alive session: one per thread)."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {token}"

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.base + path, params=params, timeout=30)

    def ok(self, path: str, **params: Any) -> Any:
        answer = self.get(path, **params)
        assert answer.status_code == 200, f"GET {path} {params}: {answer.status_code} {answer.text[:300]}"
        return answer.json()


class Progress:
    """How many requests the senders have had acknowledged, and whether ingest has ended."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.acknowledged = 0
        self.done = False
        self.acked: dict[str, int] = {}  # id -> the time it claims (ns), every acknowledged event

    def add(self, events: dict[str, int]) -> None:
        with self.changed:
            self.acked.update(events)
            self.acknowledged += 1
            self.changed.notify_all()

    def finish(self) -> None:
        with self.changed:
            self.done = True
            self.changed.notify_all()

    def snapshot(self) -> tuple[int, dict[str, int]]:
        with self.changed:
            return self.acknowledged, dict(self.acked)

    def wait_beyond(self, seen: int, timeout: float) -> int:
        """Until a request beyond the ``seen``-th is acknowledged or ingest ends (or ``timeout``)."""
        with self.changed:
            self.changed.wait_for(lambda: self.acknowledged > seen or self.done, timeout)
            return self.acknowledged


class Worker(threading.Thread):
    """A thread whose failure is handed to the test instead of vanishing."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test in join_checked
            self.failure = exc

    def work(self) -> None:
        raise NotImplementedError

    def join_checked(self, timeout: float = 120) -> None:
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not finish"
        if self.failure is not None:
            raise AssertionError(f"{self.name} failed: {self.failure!r}") from self.failure


# -- the clients ---------------------------------------------------------------------

Deliver = Callable[[list[int]], list[str]]  # claimed times (ns) -> the ids, once acknowledged


class StockOtel:
    """The stock OTel pipeline: records emitted through a ``LoggerProvider``, then handed to
    the stock OTLP exporter; its ``export()`` answering SUCCESS is the acknowledgement."""

    def __init__(self, exporter: LogRecordExporter, service: str) -> None:
        self.exporter = exporter
        self.captured = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
        self.provider = LoggerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_log_record_processor(SimpleLogRecordProcessor(self.captured))
        self.logger = self.provider.get_logger("audit")
        self.sequence = 0

    def emit(self, times: list[int]) -> tuple[list[str], Any]:
        ids = [str(uuid.uuid4()) for _ in times]
        for uid, at in zip(ids, times, strict=True):
            self.sequence += 1
            attrs = good_attributes(**{"log.record.uid": uid, "audit.sequence": self.sequence})
            self.logger.emit(timestamp=at, event_name="updateRole", attributes=attrs)
        batch = self.captured.get_finished_logs()
        self.captured.clear()
        return ids, batch

    def export(self, batch: Any) -> None:
        result = self.exporter.export(batch)
        assert result is LogRecordExportResult.SUCCESS, f"{type(self.exporter).__module__} answered {result}"

    def __call__(self, times: list[int]) -> list[str]:
        ids, batch = self.emit(times)
        self.export(batch)
        return ids

    def close(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]
        self.provider.shutdown()


class Sdk:
    """The otaudit SDK: ``record()`` each event, then ``flush()`` returning True with nothing
    rejected is the acknowledgement (every event delivered, none dead-lettered)."""

    def __init__(self, endpoint: str, protocol: str, buffer_dir: Path) -> None:
        settings = settings_from(
            endpoint=endpoint,
            protocol=protocol,
            service_name=f"sdk-{protocol.partition('/')[0]}",
            tenant=TENANT,
            buffer_dir=buffer_dir,
            environ={},
            retry_initial_seconds=0.05,
            retry_max_seconds=0.5,
        )
        self.client = audit.AuditClient(settings)

    def __call__(self, times: list[int]) -> list[str]:
        ids = [
            self.client.record(
                "siteAccess",
                category="site_access",
                actor=ANN,
                details={"method": "sso"},
                occurred_at=dt.datetime.fromtimestamp(at // 1000 / 1e6, dt.UTC),
            )
            for at in times
        ]
        assert self.client.flush(60), f"the SDK did not deliver within 60 s: {self.client.status()}"
        status = self.client.status()
        assert status.rejected == 0, f"the collector rejected SDK events: {status}"
        return ids

    def close(self) -> None:
        self.client.shutdown(5)


class Sender(Worker):
    """Sends ``batches`` requests one after another; as soon as one is acknowledged, reads
    each of its events back through ``reader`` once (read-your-ack: no retry, no wait)."""

    def __init__(
        self, name: str, deliver: Deliver, reader: Api, progress: Progress, *, batches: int, per_batch: int, seed: int
    ) -> None:
        super().__init__(name)
        self.deliver = deliver
        self.reader = reader
        self.progress = progress
        self.batches = batches
        self.per_batch = per_batch
        self.rng = random.Random(seed)
        self.unreadable: list[str] = []
        self.read_back = 0

    def claimed_times(self) -> list[int]:
        now = time.time_ns()
        late = self.rng.random() < 0.5  # about half the requests are all late, the rest mixed
        return [
            now - self.rng.randint(1, LATE_SECONDS) * 10**9 if late or self.rng.random() < 0.2 else now
            for _ in range(self.per_batch)
        ]

    def work(self) -> None:
        for _ in range(self.batches):
            times = self.claimed_times()
            ids = self.deliver(times)
            for uid in ids:
                answer = self.reader.get(f"/v1/events/{uid}")
                self.read_back += 1
                if answer.status_code != 200 or answer.json().get("id") != uid:
                    self.unreadable.append(f"{uid}: {answer.status_code} {answer.text[:200]}")
            self.progress.add(dict(zip(ids, times, strict=True)))


class Export(Worker):
    """One export of a batch already emitted, released at the same moment as another."""

    def __init__(self, name: str, client: StockOtel, batch: Any, start_line: threading.Barrier) -> None:
        super().__init__(name)
        self.client = client
        self.batch = batch
        self.start_line = start_line

    def work(self) -> None:
        self.start_line.wait(10)
        self.client.export(self.batch)


class TwinSender(Worker):
    """Exports the same requests to two collectors at once: a retry that reached two replicas.
    Both must acknowledge; the events are stored once."""

    def __init__(self, name: str, first: StockOtel, second: StockOtel, reader: Api, progress: Progress, *, batches: int) -> None:
        super().__init__(name)
        self.first, self.second = first, second
        self.reader = reader
        self.progress = progress
        self.batches = batches
        self.unreadable: list[str] = []

    def work(self) -> None:
        for _ in range(self.batches):
            now = time.time_ns()
            times = [now - (i % 3) * 60 * 10**9 for i in range(20)]
            ids, batch = self.first.emit(times)
            start_line = threading.Barrier(2)
            twin = Export(f"{self.name}-twin", self.second, batch, start_line)
            twin.start()
            start_line.wait(10)
            self.first.export(batch)
            twin.join_checked(60)
            for uid in ids:
                answer = self.reader.get(f"/v1/events/{uid}")
                if answer.status_code != 200:
                    self.unreadable.append(f"{uid}: {answer.status_code} {answer.text[:200]}")
            self.progress.add(dict(zip(ids, times, strict=True)))


class Call(Worker):
    """One request, delivered in a thread of its own."""

    def __init__(self, name: str, deliver: Deliver, times: list[int]) -> None:
        super().__init__(name)
        self.deliver = deliver
        self.times = times
        self.ids: list[str] = []

    def work(self) -> None:
        self.ids = self.deliver(self.times)


# -- the readers ---------------------------------------------------------------------


class FeedPoller(Worker):
    """Follows the feed with ``next_after`` (alternating between ``apis``) until ingest has
    ended and a poll that began after that comes back empty."""

    def __init__(self, apis: list[Api], progress: Progress, seed: int) -> None:
        super().__init__("feed-poller")
        self.apis = apis
        self.progress = progress
        self.rng = random.Random(seed)
        self.seqs: list[int] = []
        self.ids: list[str] = []
        self.occurred: list[str] = []
        self.violations: list[str] = []
        self.polls = 0

    def work(self) -> None:
        after = 0
        while True:
            finished = self.progress.done  # read before the poll: an empty answer after it means caught up
            api = self.apis[self.polls % len(self.apis)]
            page = api.ok("/v1/feed", after=after, limit=self.rng.choice([1, 7, 50, 200, 1000]))
            self.polls += 1
            seqs = [e["seq"] for e in page["events"]]
            if seqs != list(range(after + 1, after + 1 + len(seqs))):
                self.violations.append(f"poll {self.polls} after={after} via {api.base}: seqs {seqs[:20]}")
            if page["next_after"] != (seqs[-1] if seqs else after):
                self.violations.append(f"poll {self.polls} after={after}: next_after {page['next_after']}, seqs {seqs[-3:]}")
            self.seqs += seqs
            self.ids += [e["id"] for e in page["events"]]
            self.occurred += [e["occurred_at"] for e in page["events"]]
            after = page["next_after"]
            if not seqs:
                if finished:
                    return
                self.progress.wait_beyond(self.progress.acknowledged, 0.02)


@dataclass
class Walk:
    since_ns: int
    committed: set[str]  # matching the filter, in the database before the first page
    acked: set[str]  # matching the filter (by more than a millisecond), acknowledged before the first page
    ids: list[str] = field(default_factory=list)
    keys: list[tuple[dt.datetime, int]] = field(default_factory=list)
    pages: int = 0
    arrivals: int = 0  # requests acknowledged between the walk's first and last page


class Pager(Worker):
    """Walks ``/v1/events?since=...`` with the cursor from the first page to the last, over and
    over while ingest goes on; between two pages at least one more request is acknowledged."""

    def __init__(self, api: Api, db: str, progress: Progress, seed: int) -> None:
        super().__init__("pager")
        self.api = api
        self.db = db
        self.progress = progress
        self.rng = random.Random(seed)
        self.walks: list[Walk] = []

    def work(self) -> None:
        with psycopg.connect(self.db, autocommit=True) as conn:
            while not self.progress.done:
                self.walks.append(self.walk(conn))

    def walk(self, conn: psycopg.Connection[Any]) -> Walk:
        since_ns = time.time_ns() - WINDOW_SECONDS * 10**9
        seen, acked = self.progress.snapshot()
        committed = conn.execute(
            "SELECT id FROM events WHERE tenant = %s AND occurred_at >= %s", (TENANT, iso(since_ns))
        ).fetchall()
        walk = Walk(
            since_ns,
            {str(row[0]) for row in committed},
            {uid for uid, at in acked.items() if at >= since_ns + 10**6},
        )
        first = seen
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"since": iso(since_ns), "limit": self.rng.choice([17, 50, 100])}
            if cursor is not None:
                params["cursor"] = cursor
            page = self.api.ok("/v1/events", **params)
            walk.pages += 1
            walk.ids += [e["id"] for e in page["events"]]
            walk.keys += [(when(e["occurred_at"]), e["seq"]) for e in page["events"]]
            cursor = page["next_cursor"]
            if cursor is None:
                walk.arrivals = seen - first
                return walk
            seen = self.progress.wait_beyond(seen, 30)


# -- running it ----------------------------------------------------------------------


def run(senders: list[Worker], poller: FeedPoller, pager: Pager, progress: Progress) -> None:
    for worker in [poller, pager, *senders]:
        worker.start()
    try:
        for sender in senders:
            sender.join_checked(180)
    finally:
        progress.finish()
    pager.join_checked(120)
    poller.join_checked(120)


def check_feed(db: str, poller: FeedPoller, progress: Progress) -> None:
    stored = rows(
        db, "SELECT seq, id, doc->'source'->>'service' AS service FROM events WHERE tenant = %s ORDER BY seq", (TENANT,)
    )
    assert poller.violations == [], "\n".join(poller.violations[:20])
    # Exactly 1..N in order, each once, and exactly the ids stored, in commit order.
    assert poller.seqs == list(range(1, len(stored) + 1))
    assert poller.ids == [r["id"] for r in stored]
    assert len(set(poller.ids)) == len(poller.ids), "an event stored twice"
    _, acked = progress.snapshot()
    assert set(acked) <= set(poller.ids)
    # Everything else is the API's own session events (reading is audited).
    assert {r["service"] for r in stored if r["id"] not in acked} <= {"otaudit-collector"}
    # Late events did commit after newer ones: the feed's order is not time order.
    inversions = sum(1 for a, b in pairwise(poller.occurred) if when(a) > when(b))
    assert inversions > 0
    assert rows(db, "SELECT last_seq FROM tenant_seq WHERE tenant = %s", (TENANT,)) == [{"last_seq": len(stored)}]


def check_walks(pager: Pager) -> None:
    assert pager.walks, "the pager walked no trail"
    assert any(w.pages > 1 and w.arrivals > 0 for w in pager.walks), "no walk had events arriving between its pages"
    for number, walk in enumerate(pager.walks):
        label = f"walk {number} ({walk.pages} pages, {walk.arrivals} requests acknowledged during it)"
        assert len(walk.ids) == len(set(walk.ids)), f"{label}: an event twice"
        assert walk.acked <= walk.committed, f"{label}: acknowledged but not committed: {sorted(walk.acked - walk.committed)[:5]}"
        missed = walk.committed - set(walk.ids)
        assert not missed, f"{label}: {len(missed)} events committed before the walk were skipped, e.g. {sorted(missed)[:5]}"
        since = dt.datetime.fromtimestamp(walk.since_ns // 1000 / 1e6, dt.UTC)
        assert all(at >= since for at, _ in walk.keys), f"{label}: an event before since"
        assert all(a > b for a, b in pairwise(walk.keys)), f"{label}: not strictly newest first"


def check_read_your_ack(senders: list[Any]) -> None:
    unreadable = [line for s in senders for line in s.unreadable]
    assert unreadable == [], f"{len(unreadable)} acknowledged events were not readable at once: {unreadable[:5]}"


def waiting_writers(db: str) -> list[str]:
    """What the collectors' writer connections to ``db`` are waiting for on a lock."""
    found = rows(
        db,
        "SELECT wait_event FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'otaudit-writer' AND wait_event_type = 'Lock'",
    )
    return sorted(str(r["wait_event"]) for r in found)


def drain_feed(api: Api, after: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = api.ok("/v1/feed", after=after, limit=1000)
        if not page["events"]:
            return events
        assert [e["seq"] for e in page["events"]] == list(range(after + 1, after + 1 + len(page["events"])))
        events += page["events"]
        after = page["next_after"]


def hold_a_numbered_commit(db: str, first: StockOtel, second: StockOtel, apis: tuple[Api, Api], progress: Progress) -> None:
    """A late commit, made deterministic. The first collector's transaction numbers its events
    and is then held in its COPY: a test transaction locks the partition its late event (60
    days old: a past month's partition, inside the basic plan's 365-day query window) goes to.
    The second collector then gets a request of its own. While the first is held, a feed poll
    through either API may show nothing that skips the held seqs; once released, the first
    request's events come next in the feed, then the second's."""
    primer = [time.time_ns()] * 3
    progress.add(dict(zip(first(primer), primer, strict=True)))
    for api in apis:  # open the token's API session now: its audit event must not queue behind the held commit
        api.ok("/v1/feed", limit=1)
    after = drain_feed(apis[0], 0)[-1]["seq"]
    old = time.time_ns() - 60 * 86_400 * 10**9
    blocker = psycopg.connect(db)
    try:
        made = blocker.execute("SELECT otaudit_ensure_partition(%s::timestamptz)", (iso(old),)).fetchone()
        assert made is not None
        partition = str(made[0])
        blocker.commit()
        blocker.execute(f'LOCK TABLE "{partition}" IN EXCLUSIVE MODE')  # reads go on; rows routed to it wait
        now = time.time_ns()
        senders = [Call("held", first, [old, now, now, now]), Call("after-held", second, [now] * 4)]
        senders[0].start()
        wait_until(lambda: waiting_writers(db) == ["relation"], 30, "the first collector's commit held by the partition lock")
        senders[1].start()
        wait_until(
            lambda: waiting_writers(db) == ["relation", "transactionid"] or not senders[1].is_alive(),
            30,
            "the second collector's commit to wait for the first (or to end)",
        )
        for api in apis:
            page = api.ok("/v1/feed", after=after, limit=1000)
            seqs = [e["seq"] for e in page["events"]]
            assert seqs == list(range(after + 1, after + 1 + len(seqs))), (
                f"via {api.base}: seqs {seqs} are visible while seq {after + 1} (taken by the held transaction) is not"
            )
        blocker.rollback()
        for sender in senders:
            sender.join_checked(60)
    finally:
        blocker.close()
    for uid in senders[0].ids:  # read-your-ack, through the other collector
        assert apis[1].get(f"/v1/events/{uid}").status_code == 200
    for uid in senders[1].ids:
        assert apis[0].get(f"/v1/events/{uid}").status_code == 200
    later = drain_feed(apis[1], after)
    assert [e["seq"] for e in later] == list(range(after + 1, after + 9))
    assert {e["id"] for e in later[:4]} == set(senders[0].ids) and {e["id"] for e in later[4:]} == set(senders[1].ids)
    for sender in senders:
        progress.add(dict(zip(sender.ids, sender.times, strict=True)))


@pytest.fixture
def clients() -> Iterator[list[StockOtel | Sdk]]:
    made: list[StockOtel | Sdk] = []
    yield made
    for client in made:
        client.close()


@pytest.mark.slow
def test_feed_cursor_and_read_your_ack_under_concurrent_ingest(
    collector: RunningCollector, tmp_path: Path, clients: list[StockOtel | Sdk]
) -> None:
    token = admin_token(collector.conninfo)
    progress = Progress()
    clients += [
        StockOtel(GrpcLogExporter(endpoint=collector.grpc_target, insecure=True), "stock-grpc"),
        StockOtel(HttpLogExporter(endpoint=collector.http_url), "stock-http"),
        Sdk(collector.http_url, "http/protobuf", tmp_path / "sdk-http"),
        Sdk(f"http://{collector.grpc_target}", "grpc", tmp_path / "sdk-grpc"),
    ]
    senders = [
        Sender(f"sender-{i}", client, Api(collector.api_url, token), progress, batches=24, per_batch=25, seed=i)
        for i, client in enumerate(clients)
    ]
    poller = FeedPoller([Api(collector.api_url, token)], progress, seed=10)
    pager = Pager(Api(collector.api_url, token), collector.conninfo, progress, seed=11)
    run(list(senders), poller, pager, progress)

    assert len(progress.acked) == 4 * 24 * 25
    assert sum(s.read_back for s in senders) == len(progress.acked)
    check_read_your_ack(senders)
    check_feed(collector.conninfo, poller, progress)
    check_walks(pager)


@pytest.mark.slow
def test_two_collectors_on_one_database_keep_the_feed_gap_free(
    collector: RunningCollector, tmp_path: Path, clients: list[StockOtel | Sdk]
) -> None:
    other = CollectorProcess(
        ["serve", "--database-url", collector.conninfo, "--grpc-port", "0", "--http-port", "0", "--api-port", "0"], cwd=tmp_path
    ).start()
    try:
        here, there = collector.api_url, f"http://127.0.0.1:{other.ports['API']}"
        other_http = f"http://127.0.0.1:{other.ports['OTLP/HTTP']}/v1/logs"
        token = admin_token(collector.conninfo)
        progress = Progress()
        to_here = StockOtel(GrpcLogExporter(endpoint=collector.grpc_target, insecure=True), "stock-grpc")
        to_there = StockOtel(HttpLogExporter(endpoint=other_http), "stock-http")
        twin_here = StockOtel(GrpcLogExporter(endpoint=collector.grpc_target, insecure=True), "twin")
        twin_there = StockOtel(HttpLogExporter(endpoint=other_http), "twin")
        sdk_there = Sdk(f"http://{other.grpc_target}", "grpc", tmp_path / "sdk-grpc")
        clients += [to_here, to_there, twin_here, twin_there, sdk_there]
        hold_a_numbered_commit(collector.conninfo, to_here, to_there, (Api(here, token), Api(there, token)), progress)
        # Each sender reads its acknowledged events through the other collector's API.
        senders: list[Worker] = [
            Sender("to-here", to_here, Api(there, token), progress, batches=20, per_batch=20, seed=1),
            Sender("to-there", to_there, Api(here, token), progress, batches=20, per_batch=20, seed=2),
            Sender("sdk-to-there", sdk_there, Api(here, token), progress, batches=20, per_batch=20, seed=3),
            TwinSender("to-both", twin_here, twin_there, Api(here, token), progress, batches=20),
        ]
        poller = FeedPoller([Api(here, token), Api(there, token)], progress, seed=20)
        pager = Pager(Api(there, token), collector.conninfo, progress, seed=21)
        run(senders, poller, pager, progress)
    finally:
        exit_code = other.terminate()
    assert exit_code == 0, "".join(other.output[-20:])
    assert len(progress.acked) == 3 + 4 + 4 + 3 * 20 * 20 + 20 * 20
    check_read_your_ack(senders)
    check_feed(collector.conninfo, poller, progress)
    check_walks(pager)
