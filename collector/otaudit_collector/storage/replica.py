"""Reads from a PostgreSQL streaming replica (``database.read_url``).

The API sends the reads that tolerate a little staleness to a hot standby of the primary:
pages of events and search (``GET /v1/events``, an object's history is such a page) and one
event (``GET /v1/events/{id}``, asked of the primary again when the standby does not have it
yet). Everything that must read its own writes or be current stays on the primary: the feed
(clients resume it from the ``seq`` they were given), tokens and viewer keys (a revocation
takes effect at once), export jobs and downloads, streams, the log's checkpoints, tiles and
proofs, and the streamed export (api/reads.py, ``lag_tolerant``).

A standby is used only while it is one (``pg_is_in_recovery()``) and its replay lag, measured
every ``CHECK_SECONDS`` on a connection of its own, is at most
``database.max_replica_lag_seconds``. Otherwise (lagging, unreachable, promoted, or a query
on it failed on a broken connection) those reads go to the primary: the collector stays ready,
since the primary answers them; ``/readyz`` says so under ``degraded`` and ``replica``, and
``/metrics`` has ``otaudit_replica_*``. Without ``read_url`` nothing of this runs: every read
uses the primary's pool, as before.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from otaudit_collector.config import Settings
from otaudit_collector.metrics import Metrics, ReplicaFigures

__all__ = ["CHECK_SECONDS", "LAG_SQL", "ReadReplica", "ReplicaState"]

log = logging.getLogger("otaudit")

T = TypeVar("T")

CHECK_SECONDS: Final = 2.0
"""How often the replica's state and replay lag are measured."""
TIMEOUT_SECONDS: Final = 5.0
"""The longest a measurement, a connection to the replica or a wait for one of its pool's connections takes."""
POOL_SIZE: Final = 4
"""Connections to the replica, as many as the primary's API pool."""

LAG_SQL: Final = (
    "SELECT pg_is_in_recovery(), CASE"
    " WHEN NOT pg_is_in_recovery() THEN NULL"
    # everything received is replayed: not behind, however long ago the primary last committed
    " WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0"
    " ELSE greatest(0, extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()))::float8 END"
)
"""(is it a standby, how many seconds its replay is behind; NULL when not known)."""

STATES: Final = ("streaming", "lagging", "down", "not_standby")
"""streaming: in use; lagging: behind by more than the limit (or by an unknown time); down: unreachable;
not_standby: it answers but is no standby (promoted, or read_url names a primary)."""


@dataclass(frozen=True, slots=True)
class ReplicaState:
    state: str  # one of STATES
    lag_seconds: float | None
    problem: str | None  # why lag-tolerant reads use the primary; None while they use the replica
    checked_at: float  # time.time() of the measurement


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class ReadReplica:
    """Where lag-tolerant reads go: ``read_url``'s standby while it is usable, else ``primary``."""

    def __init__(
        self,
        primary: AsyncConnectionPool[Any],
        read_url: str | None,
        max_lag_seconds: float = 30.0,
        *,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.primary = primary
        self.read_url = read_url or None
        self.max_lag_seconds = max_lag_seconds
        self.check_seconds = check_seconds
        self._pool: AsyncConnectionPool[Any] | None = None
        self._probe: psycopg.AsyncConnection[Any] | None = None
        self._state = ReplicaState("down", None, "is not checked yet", 0.0)
        self._reads = {"replica": 0, "primary": 0}
        self._task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, settings: Settings, primary: AsyncConnectionPool[Any], metrics: Metrics) -> ReadReplica:
        """The replica of ``database.read_url``, checked once and then every ``CHECK_SECONDS``; with no
        read_url, one that sends every read to ``primary`` and reports nothing."""
        database = settings.get("database")
        replica = cls(primary, database.get("read_url"), float(database.get("max_replica_lag_seconds", 30)))
        if replica.configured:
            await replica.check()
            metrics.watch_pool("replica", replica._pool_stats)
            metrics.watch_replica(replica.figures)
            replica._task = asyncio.create_task(replica.watch(), name="otaudit-replica")
        return replica

    @property
    def configured(self) -> bool:
        return self.read_url is not None

    @property
    def state(self) -> ReplicaState:
        return self._state

    @property
    def in_use(self) -> bool:
        """Whether lag-tolerant reads go to the replica now."""
        return self._pool is not None and self._state.state == "streaming"

    # -- reading ---------------------------------------------------------------------------

    async def read(
        self, work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]], *, again: Callable[[T], bool] | None = None
    ) -> T:
        """``work(conn)`` on the replica when it is in use, else on the primary. On the replica,
        a failure of the server or its connection (a recovery conflict, a restart) runs it again on
        the primary, as does a result for which ``again`` says so (an event the replica lacks yet)."""
        pool = self._pool if self.in_use else None
        if pool is not None:
            broken = False
            try:
                async with pool.connection() as conn:
                    try:
                        result = await work(conn)
                    except psycopg.OperationalError:
                        broken = conn.broken or conn.closed
                        raise
            except (PoolTimeout, PoolClosed):
                pass  # all its connections busy for TIMEOUT_SECONDS, or just dropped: the primary answers
            except psycopg.OperationalError as exc:
                if broken:
                    self._lost(pool, f"failed a read ({_first_line(exc)})")
                else:
                    log.info("a read on the replica failed; the primary answers it", extra={"error": _first_line(exc)})
            else:
                self._reads["replica"] += 1
                if again is None or not again(result):
                    return result
        if self.configured:
            self._reads["primary"] += 1
        async with self.primary.connection() as conn:
            return await work(conn)

    # -- watching --------------------------------------------------------------------------

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - the watch goes on; reads use the primary meanwhile
                log.warning("could not check the read replica", extra={"error": _first_line(exc)})

    async def check(self) -> ReplicaState:
        """Measure the replica now, and start or stop using it accordingly."""
        now = time.time()
        try:
            in_recovery, lag = await asyncio.wait_for(self._measure(), TIMEOUT_SECONDS)
        except (TimeoutError, OSError, psycopg.Error) as exc:
            await self._drop_probe()
            state = ReplicaState("down", None, f"is unreachable ({_first_line(exc)})", now)
        else:
            if not in_recovery:
                state = ReplicaState("not_standby", None, "is not a standby (pg_is_in_recovery() is false)", now)
            elif lag is None:
                state = ReplicaState("lagging", None, "has a replay lag not known yet (nothing replayed since it started)", now)
            elif lag > self.max_lag_seconds:
                state = ReplicaState(
                    "lagging",
                    lag,
                    f"lags {lag:.1f} s behind the primary (database.max_replica_lag_seconds: {self.max_lag_seconds:g})",
                    now,
                )
            else:
                state = ReplicaState("streaming", lag, None, now)
        if state.state in ("streaming", "lagging"):
            if self._pool is None:
                try:
                    self._pool = await self._open_pool()
                except (TimeoutError, OSError, psycopg.Error) as exc:
                    state = ReplicaState("down", state.lag_seconds, f"cannot be connected to ({_first_line(exc)})", now)
        elif self._pool is not None:
            self._drop_pool(self._pool)
        self._set(state)
        return state

    async def _measure(self) -> tuple[bool, float | None]:
        if self._probe is None or self._probe.closed:
            assert self.read_url is not None
            self._probe = await psycopg.AsyncConnection.connect(
                self.read_url, autocommit=True, connect_timeout=int(TIMEOUT_SECONDS), application_name="otaudit-replica-check"
            )
        cur = await self._probe.execute(LAG_SQL)
        row = await cur.fetchone()
        assert row is not None
        return bool(row[0]), None if row[1] is None else float(row[1])

    async def _open_pool(self) -> AsyncConnectionPool[Any]:
        assert self.read_url is not None
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.read_url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            name="otaudit-api-replica",
            timeout=TIMEOUT_SECONDS,
            kwargs={"autocommit": True, "application_name": "otaudit-api-replica"},
        )
        try:
            await pool.open(wait=True, timeout=TIMEOUT_SECONDS)
        except BaseException:
            await pool.close()
            raise
        return pool

    def _set(self, state: ReplicaState) -> None:
        before = self._state
        self._state = state
        if state.state != before.state:
            if state.problem is None:
                log.info("the read replica is in use", extra={"lag_seconds": state.lag_seconds})
            else:
                log.warning(
                    "the read replica %s; event pages and search read from the primary",
                    state.problem,
                    extra={"replica_state": state.state},
                )

    def _lost(self, pool: AsyncConnectionPool[Any], why: str) -> None:
        """A read found the replica's connection broken: stop using it until a check finds it back."""
        if self._pool is pool:
            self._drop_pool(pool)
            self._set(ReplicaState("down", None, why, time.time()))

    def _drop_pool(self, pool: AsyncConnectionPool[Any]) -> None:
        """Stop lending ``pool``'s connections; it closes in the background (those lent close when given back)."""
        if self._pool is pool:
            self._pool = None
        task = asyncio.create_task(pool.close(timeout=TIMEOUT_SECONDS), name="otaudit-replica-pool-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _drop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            try:
                await probe.close()
            except (OSError, psycopg.Error):
                pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pool is not None:
            self._drop_pool(self._pool)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._drop_probe()

    # -- reporting -------------------------------------------------------------------------

    def _pool_stats(self) -> dict[str, int]:
        pool = self._pool
        return dict(pool.get_stats()) if pool is not None else {"pool_max": POOL_SIZE}

    def figures(self) -> ReplicaFigures:
        """What ``/metrics`` shows of the replica (metrics.Metrics.watch_replica)."""
        state = self._state
        lag = state.lag_seconds
        return ReplicaFigures(
            up=state.state in ("streaming", "lagging"),
            in_use=self.in_use,
            lag_seconds=lag if lag is not None else math.nan,
            reads=dict(self._reads),
        )

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` adds: the replica's state, and under ``degraded`` why reads use the primary.
        The collector stays ready: the primary answers every read. Nothing without read_url."""
        if not self.configured:
            return {}
        state = self._state
        replica: dict[str, Any] = {
            "state": state.state,
            "reads_from": "replica" if self.in_use else "primary",
            "lag_seconds": round(state.lag_seconds, 3) if state.lag_seconds is not None else None,
            "max_lag_seconds": self.max_lag_seconds,
        }
        answer: dict[str, Any] = {"replica": replica}
        if not self.in_use:
            problem = state.problem or "is not in use"
            replica["problem"] = problem
            answer["degraded"] = [f"the read replica (database.read_url) {problem}: event pages and search read from the primary"]
        return answer
