"""``otaudit verify``: recompute every tenant's log from its stored rows and check it all.

For each tenant, from the database (operators):

1. every stored event, in ``seq`` order, gives its leaf again (``otaudit_verify.entry``
   from the row's document, ``received_at`` and seals), and its columns must say what its
   document says;
2. the leaves must be the stored level-0 tiles, one for one: a leaf that differs is an
   altered event (or a reordered one, when it is the stored leaf of another position); a
   position with no row is a removed event, unless retention removed it (``log_pruned``),
   and then the stored leaf stands in for it; a row beyond the tree is an inserted one;
3. the tree rebuilt from those leaves must have the root that the stored tiles give, and
   at each stored checkpoint its root; each checkpoint's signature must verify with a
   trusted key (the configured signing key and ``integrity.trusted_keys``, or only the
   ``--key`` given); and so must each checkpoint of the witness folder, when given.

It reports the first altered, removed, inserted or reordered event (its seq and id), how
many more there are, every checkpoint that does not match, and exits 1 when anything is
wrong. Leaves are recomputed by worker processes, a chunk of 65,536 positions each.
"""

from __future__ import annotations

import argparse
import bisect
import http.client
import json
import os
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from otaudit_collector._text import plural
from otaudit_collector.export_command import Progress
from otaudit_collector.storage import log as logdb
from otaudit_verify import merkle, tiles
from otaudit_verify.checkpoint import CheckpointError, parse_checkpoint
from otaudit_verify.entry import EntryError, entry_hash_owned
from otaudit_verify.note import NoteError, Verifier, open_note, parse_verifier_key

__all__ = ["verify_command", "verify_tenant", "TenantReport"]

CHUNK = 1 << 16
"""Positions per worker task: a multiple of every tile's span up to level 1 (2**16 leaves)."""

_ROWS_SQL = (
    "SELECT seq, id, doc::text, seals::text,"
    " to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
    " category, event, outcome, actor_type, actor_id, actor_email, target_type, target_id, flags,"
    " to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    " FROM events WHERE tenant = %s AND seq > %s AND seq <= %s ORDER BY seq"
)
_LEVEL0_SQL = "SELECT idx, hashes FROM log_tiles WHERE tenant = %s AND level = 0 AND idx >= %s AND idx < %s ORDER BY idx"


@dataclass(slots=True)
class TenantReport:
    tenant: str
    tree_size: int = 0
    events_checked: int = 0
    pruned: int = 0
    pruned_by: dict[int, int] = field(default_factory=dict)
    """Events pruned, by the retention run (retention_runs.id) that removed them."""
    behind: int = 0
    checkpoints_checked: int = 0
    witnessed_checked: int = 0
    first_event_problem: str | None = None
    event_problems: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing altered, and every event proven: one not in the log yet is not proven either."""
        return self.first_event_problem is None and not self.problems and not self.behind

    def lines(self) -> list[str]:
        head = (
            f"tenant {self.tenant}: {'OK' if self.ok else 'ALTERED'}: {plural(self.events_checked, 'event', thousands=True)}"
            f" recomputed, tree of {self.tree_size:,} leaves, {plural(self.checkpoints_checked, 'checkpoint', thousands=True)}"
        )
        if self.witnessed_checked:
            head += f", {self.witnessed_checked:,} witnessed"
        out = [head]
        if self.pruned:
            out.append(
                f"  {plural(self.pruned, 'event', thousands=True)} removed by retention (pruned; their leaves stay in the tree):"
                + ", ".join(f" {n:,} by retention run {run}" for run, n in sorted(self.pruned_by.items()))
            )
        if self.behind:
            out.append(
                f"  {plural(self.behind, 'event', thousands=True)} after the tree's {self.tree_size:,} leaves are not in"
                " the log, so nothing proves them: stored while the log was off (the collector appends them within"
                " integrity.catch_up_seconds), or inserted around it"
            )
        if self.first_event_problem:
            out.append(f"  first problem: {self.first_event_problem}")
            if self.event_problems > 1:
                out.append(f"  and {self.event_problems - 1:,} more event(s) that do not match")
        out.extend(f"  {problem}" for problem in self.problems)
        return out


# -- worker: recompute one chunk's leaves ---------------------------------------------------

_worker_conns: dict[str, psycopg.Connection[Any]] = {}  # a worker process's connection, per database


def _connection(conninfo: str) -> psycopg.Connection[Any]:
    conn = _worker_conns.get(conninfo)
    if conn is None or conn.closed or conn.broken:
        conn = _worker_conns[conninfo] = psycopg.connect(conninfo, autocommit=True)
    return conn


def _derived(doc: dict[str, Any]) -> tuple[Any, ...]:
    actor = doc.get("actor") or {}
    target = doc.get("target") or {}
    return (
        doc.get("category"),
        doc.get("event"),
        doc.get("outcome"),
        actor.get("type"),
        actor.get("id"),
        actor.get("email"),
        target.get("type"),
        target.get("id"),
        list(doc.get("flags") or []),
        doc.get("occurred_at"),
    )


def check_chunk(
    conninfo: str, tenant: str, start: int, stop: int
) -> tuple[int, bytes, list[tuple[int, str, str]], int, list[int]]:
    """Leaves of positions [start, stop) from the stored rows, compared with the stored level-0 tiles.

    Returns (start, the leaves as the tree should have them, problems as (seq, id, what), rows
    read, the seqs without a row). A position without a row takes the stored leaf; a row
    whose leaf differs keeps its recomputed leaf (so the rebuilt tree shows the change).
    """
    return _check_chunk(_connection(conninfo), tenant, start, stop)


def _check_chunk(
    conn: psycopg.Connection[Any], tenant: str, start: int, stop: int
) -> tuple[int, bytes, list[tuple[int, str, str]], int, list[int]]:
    stored = bytearray()
    for _idx, hashes in conn.execute(_LEVEL0_SQL, (tenant, start // tiles.TILE_WIDTH, -(-stop // tiles.TILE_WIDTH))):
        stored += bytes(hashes)
    leaves = bytearray(stored[: (stop - start) * merkle.HASH_SIZE])
    if len(leaves) < (stop - start) * merkle.HASH_SIZE:  # stored tiles are short: the missing leaves are zero
        leaves += bytes((stop - start) * merkle.HASH_SIZE - len(leaves))
    problems: list[tuple[int, str, str]] = []
    expected = start + 1
    missing: list[int] = []
    rows = 0
    seen_at: dict[bytes, int] = {}
    for seq, event_id, doc_text, seals_text, received, *columns in conn.execute(_ROWS_SQL, (tenant, start, stop)):
        rows += 1
        if seq < expected:
            problems.append((seq, event_id, f"is a second row with seq {seq} (inserted)"))
            continue
        missing.extend(range(expected, seq))
        expected = seq + 1
        at = (seq - 1 - start) * merkle.HASH_SIZE
        doc = json.loads(doc_text)
        # The columns first: making the entry sets the document's sealed (personal) values to null.
        columns_agree = doc.get("id") == event_id and list(_derived(doc)) == [*columns[:8], list(columns[8] or []), columns[9]]
        try:
            leaf = entry_hash_owned(doc, received, json.loads(seals_text) if seals_text else {})
        except (EntryError, ValueError, KeyError, TypeError) as exc:
            problems.append((seq, event_id, f"its leaf entry cannot be made: {exc}"))
            continue
        if leaf != bytes(stored[at : at + merkle.HASH_SIZE]):
            if not seen_at:
                seen_at = {
                    bytes(stored[i : i + merkle.HASH_SIZE]): start + 1 + i // merkle.HASH_SIZE
                    for i in range(0, len(stored), merkle.HASH_SIZE)
                }
            other = seen_at.get(leaf)
            if other is not None and other != seq:
                problems.append((seq, event_id, f"holds the event the log has at seq {other} (reordered)"))
            else:
                problems.append((seq, event_id, "its content is not what the log recorded (altered)"))
            leaves[at : at + merkle.HASH_SIZE] = leaf
        if not columns_agree:
            problems.append((seq, event_id, "a column differs from the event's document (altered column)"))
    missing.extend(range(expected, stop + 1))
    return start, bytes(leaves), problems, rows, missing


# -- per tenant -----------------------------------------------------------------------------


def _pruned_seqs(conn: psycopg.Connection[Any], tenant: str) -> list[tuple[int, int, int]]:
    """(first seq, last seq, run id) of each range retention removed."""
    rows = conn.execute(
        "SELECT run_id, lower(r), upper(r) - 1 FROM log_pruned, unnest(seqs) AS r WHERE tenant = %s ORDER BY 2", (tenant,)
    ).fetchall()
    return [(int(lo), int(hi), int(run)) for run, lo, hi in rows]


def _pruned_by(seq: int, ranges: Sequence[tuple[int, int, int]]) -> int | None:
    """The retention run that removed ``seq``, or None."""
    at = bisect.bisect_right(ranges, (seq, _MAX_SEQ, _MAX_SEQ)) - 1
    if at >= 0 and ranges[at][0] <= seq <= ranges[at][1]:
        return ranges[at][2]
    return None


_MAX_SEQ = 2**63


def verify_tenant(
    conninfo: str,
    tenant: str,
    trusted: Sequence[Verifier],
    *,
    witness_notes: Sequence[tuple[int, str]] = (),
    pool: ProcessPoolExecutor | None = None,
    progress: Progress | None = None,
) -> TenantReport:
    report = TenantReport(tenant)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        state = logdb.log_state(conn, tenant)
        max_seq_row = conn.execute("SELECT max(seq), count(*) FROM events WHERE tenant = %s", (tenant,)).fetchone()
        checkpoints = logdb.all_checkpoints(conn, tenant)
        pruned = _pruned_seqs(conn, tenant)
        source = logdb.TileSource(conn, tenant)
        size = state.size
        report.tree_size = size
        report.behind = max(0, state.last_seq - size)
        max_seq = int(max_seq_row[0] or 0) if max_seq_row else 0
        if max_seq > state.last_seq:
            report.problems.append(
                f"rows with seq up to {max_seq} exist, but the tenant has had only {state.last_seq} (inserted events)"
            )
        # Sizes to check: every stored checkpoint, every witnessed one, and the tree's own size.
        sizes = sorted({c.size for c in checkpoints} | {s for s, _ in witness_notes} | ({size} if size else set()))
        for s in sizes:
            if s > size:
                report.problems.append(
                    f"a checkpoint has {s:,} leaves, the tree only {size:,}: events were removed from its end (truncated)"
                )
        builder = merkle.TreeBuilder()
        roots: dict[int, bytes] = {}
        wanted = [s for s in sizes if s <= size]
        tasks = [(start, min(start + CHUNK, size)) for start in range(0, size, CHUNK)]
        results: Iterator[tuple[int, bytes, list[tuple[int, str, str]], int, list[int]]]
        if pool is not None and len(tasks) > 1:
            results = pool.map(check_chunk, *zip(*[(conninfo, tenant, a, b) for a, b in tasks], strict=True))
        else:
            results = (_check_chunk(conn, tenant, a, b) for a, b in tasks)
        next_size = 0
        for start, leaves, problems, rows, missing in results:
            report.events_checked += rows
            for seq in missing:
                run = _pruned_by(seq, pruned)
                if run is not None:
                    report.pruned += 1
                    report.pruned_by[run] = report.pruned_by.get(run, 0) + 1
                else:
                    problems.append((seq, "", "is gone: no row has this seq and retention did not remove it (removed)"))
            for seq, event_id, what in sorted(problems):
                report.event_problems += 1
                if report.first_event_problem is None:
                    report.first_event_problem = f"seq {seq} (event {event_id}) {what}" if event_id else f"seq {seq} {what}"
            for offset in range(0, len(leaves), merkle.HASH_SIZE):
                builder.append(leaves[offset : offset + merkle.HASH_SIZE])
                next_size += 1
                while wanted and wanted[0] == next_size:
                    roots[wanted.pop(0)] = builder.root()
            if progress is not None:
                progress.update(start + len(leaves) // merkle.HASH_SIZE, size)
        if size:
            try:
                if source.root(size) != roots[size]:
                    report.problems.append("the stored tiles above the leaves do not give the tree's root (a tile was altered)")
            except (logdb.LogCorrupt, tiles.TileError) as exc:
                report.problems.append(f"the stored tiles are damaged: {exc}")
        for checkpoint in checkpoints:
            report.checkpoints_checked += 1
            problem = _check_note(checkpoint.note, checkpoint.size, roots, trusted, "stored checkpoint")
            if problem:
                report.problems.append(problem)
        for s, note in witness_notes:
            report.witnessed_checked += 1
            problem = _check_note(note, s, roots, trusted, "witnessed checkpoint")
            if problem:
                report.problems.append(problem)
    return report


def _check_note(note: str, size: int, roots: dict[int, bytes], trusted: Sequence[Verifier], what: str) -> str | None:
    try:
        opened = open_note(note, trusted)
    except NoteError as exc:
        return f"{what} of size {size:,}: its signature does not verify with a trusted key ({exc})"
    try:
        checkpoint = parse_checkpoint(opened.text)
    except CheckpointError as exc:
        return f"{what} of size {size:,}: not a checkpoint ({exc})"
    if checkpoint.size != size:
        return f"{what} of size {size:,} says {checkpoint.size:,} leaves"
    root = roots.get(size)
    if root is None:
        return None  # reported above: the tree is smaller
    if root != checkpoint.root:
        return f"{what} of size {size:,}: the tree rebuilt from the stored events has another root (events altered, removed or reordered before it)"
    return None


# -- the command ------------------------------------------------------------------------------


def verify_api_command(args: argparse.Namespace) -> int:
    """``otaudit verify --url URL`` with the token in OTAUDIT_TOKEN: what the token's tenant can check."""
    token = os.environ.get("OTAUDIT_TOKEN", "")
    if not token:
        print("otaudit: set OTAUDIT_TOKEN to an admin token of the tenant to verify", file=sys.stderr)
        return 2
    progress = Progress(sys.stderr, "leaves", enabled=not args.no_progress)
    try:
        with tempfile.TemporaryDirectory(prefix="otaudit-verify-") as workdir:
            report = verify_via_api(args.url, token, args.key or [], args.witness_dir, progress, workdir)
    except (ApiRefused, OSError, ValueError) as exc:
        progress.finish("")
        print(f"otaudit: {exc}", file=sys.stderr)
        return 2
    progress.finish("")
    print("\n".join(report.lines()), flush=True)
    return 0 if report.ok else 1


def verify_command(args: argparse.Namespace, settings: Any, conninfo: str) -> int:
    from otaudit_collector.integrity import Witnesses, load_log_keys

    keys = load_log_keys(settings, conninfo)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tenants = args.tenant or [str(r[0]) for r in conn.execute("SELECT tenant FROM tenant_seq ORDER BY tenant")]
    witnesses = Witnesses(args.witness_dir) if args.witness_dir else None
    failed = False
    workers = max(1, min(int(args.workers or os.cpu_count() or 1), 8))
    with ProcessPoolExecutor(workers) if workers > 1 else _NoPool() as pool:
        for tenant in tenants:
            if args.key:
                trusted = [Verifier(keys.origin(tenant), parse_verifier_key(k).public_key) for k in args.key]
            else:
                trusted = keys.verifiers(tenant)
            notes = witnesses.published(keys.origin(tenant)) if witnesses is not None else []
            progress = Progress(sys.stderr, "leaves", enabled=not args.no_progress)
            report = verify_tenant(
                conninfo, tenant, trusted, witness_notes=notes, pool=pool if workers > 1 else None, progress=progress
            )
            progress.finish("")
            print("\n".join(report.lines()), flush=True)
            failed = failed or not report.ok
    return 1 if failed else 0


class _NoPool:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def add_verify_parser(commands: Any, with_config: Any) -> None:
    verify = with_config(
        commands.add_parser(
            "verify",
            help="recompute each tenant's tamper-evident log from the stored events and check it",
            description="From the database (operators): recomputes every leaf from the stored rows, rebuilds the tree,"
            " checks it against the stored tiles and every checkpoint's signature and root, and against a witness"
            " folder when given. Reports the first altered, removed, inserted or reordered event and every checkpoint"
            " that does not match; exits 1 if anything does.",
        )
    )
    verify.add_argument(
        "--url",
        help="through the API instead, with an admin token in OTAUDIT_TOKEN: its tenant's tiles, checkpoint and readable events",
    )
    verify.add_argument("--tenant", action="append", metavar="TENANT", help="only this tenant (repeatable; default every tenant)")
    verify.add_argument("--witness-dir", metavar="DIR", help="also check the checkpoints written to this witness folder")
    verify.add_argument(
        "--key", action="append", metavar="VKEY", help="trust only this verifier key (the published one; repeatable)"
    )
    verify.add_argument("--workers", type=int, metavar="N", help="processes recomputing leaves (default: the CPU count)")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")


# -- through the API --------------------------------------------------------------------------


class _Api:
    """GETs on one keep-alive connection to the collector's API, with the token."""

    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url {url!r} is not an http(s) URL such as http://otaudit:4319")
        kind = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = kind(parts.hostname, parts.port, timeout=120)
        self._prefix = parts.path
        self._headers = {"Authorization": f"Bearer {token}"}

    def get(self, path: str) -> tuple[int, bytes]:
        self._conn.request("GET", self._prefix + path, headers=self._headers)
        answer = self._conn.getresponse()
        return answer.status, answer.read()

    def text(self, path: str) -> str:
        status, body = self.get(path)
        if status != 200:
            raise ApiRefused(f"GET {path}: {status} {body[:300].decode('utf-8', 'replace')}")
        return body.decode("utf-8")


class ApiRefused(Exception):
    pass


def verify_via_api(
    url: str, token: str, pinned: Sequence[str], witness_dir: str | None, progress: Progress, workdir: str
) -> TenantReport:
    """What a tenant's own token can check: the signed checkpoint, every tile of its tree (rebuilt
    from the leaves up), the events it may read (a bundle: each leaf recomputed and tied to the
    root), and the witness folder's checkpoints."""
    from otaudit_verify.bundle import BundleError, verify_bundle
    from otaudit_verify.checkpoint import tenant_of

    api = _Api(url, token)
    note = api.text("/v1/log/checkpoint")
    served = [parse_verifier_key(line) for line in api.text("/v1/log/key").splitlines() if line.strip()]
    trusted = [parse_verifier_key(k) for k in pinned] if pinned else served
    origin = note.split("\n", 1)[0]
    tenant = origin.rsplit("/", 1)[-1]
    try:
        tenant = tenant_of(origin, origin.rsplit("/", 1)[0])
    except CheckpointError:
        pass
    report = TenantReport(tenant)
    try:
        checkpoint = parse_checkpoint(open_note(note, trusted).text)
    except (NoteError, CheckpointError) as exc:
        report.problems.append(f"the latest checkpoint does not verify with a trusted key: {exc}")
        return report
    size = report.tree_size = checkpoint.size
    report.checkpoints_checked = 1
    # Every tile, the leaves first: the tree rebuilt from them must have the signed root, and
    # every upper tile must hold the hashes the leaves give.
    builder = merkle.TreeBuilder()
    levels: dict[int, list[bytes]] = {0: []}
    for level, index, width in tiles.tiles_for(size):
        status, data = api.get("/v1/log/" + tiles.tile_path(level, index, width))
        if status != 200 or len(data) != width * merkle.HASH_SIZE:
            report.problems.append(f"tile {tiles.tile_path(level, index, width)} is missing or the wrong size ({status})")
            return report
        hashes = [data[i : i + merkle.HASH_SIZE] for i in range(0, len(data), merkle.HASH_SIZE)]
        if level == 0:
            for leaf in hashes:
                builder.append(leaf)
            levels[0].extend(hashes)
            progress.update(builder.size, size)
        else:
            below = levels[level - 1]
            for n, stored in enumerate(hashes):
                at = (index * tiles.TILE_WIDTH + n) * tiles.TILE_WIDTH
                if merkle.root_of(below[at : at + tiles.TILE_WIDTH]) != stored:
                    report.problems.append(f"tile {tiles.tile_path(level, index, width)} does not hold the hashes its leaves give")
                    return report
            levels.setdefault(level, []).extend(hashes)
    roots = {size: builder.root()}
    if roots[size] != checkpoint.root:
        report.problems.append(f"the tree rebuilt from the served tiles has another root than the signed checkpoint of {size:,} leaves")
    # The events this token may read, each recomputed and tied to the root.
    bundle_path = os.path.join(workdir, "otaudit-verify.zip")
    status, data = api.get("/v1/export?format=bundle")
    if status != 200:
        report.problems.append(f"no bundle of the readable events: {status} {data[:300].decode('utf-8', 'replace')}")
    else:
        with open(bundle_path, "wb") as out:
            out.write(data)
        try:
            proved = verify_bundle(bundle_path, trusted_keys=[v.vkey() for v in trusted])
            report.events_checked = proved.events
            if proved.tree_size <= size and proved.tree_size not in roots:
                leaves = levels[0][: proved.tree_size]
                if merkle.root_of(leaves) != proved.root:
                    report.problems.append(f"the bundle's checkpoint of {proved.tree_size:,} leaves disagrees with the served tiles")
        except BundleError as exc:
            report.first_event_problem = str(exc)
            report.event_problems = 1
    if witness_dir:
        from otaudit_collector.integrity import Witnesses

        for witnessed_size, witnessed in Witnesses(witness_dir).published(origin):
            report.witnessed_checked += 1
            if witnessed_size <= size and witnessed_size not in roots:
                roots[witnessed_size] = merkle.root_of(levels[0][:witnessed_size])
            problem = _check_note(witnessed, witnessed_size, roots, trusted, "witnessed checkpoint")
            if problem:
                report.problems.append(problem)
            elif witnessed_size > size:
                report.problems.append(f"the witness holds a checkpoint of {witnessed_size:,} leaves, the served log only {size:,} (truncated)")
    return report
