"""A running collector's log, as served by its API, checked by Go's golang.org/x/mod/sumdb (note,
tlog): an implementation otaudit did not write (tests/gotlog.py builds it from Debian's sources)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import psycopg
import requests
from gotlog import run_checks
from support import RunningCollector
from test_api_reads import ROLE, send, token

from otaudit_collector.storage import log as logdb
from otaudit_verify import merkle

EVENTS = 700  # two full tiles and a partial one at level 0, a partial one at level 1


def _doc(n: int) -> dict[str, Any]:
    doc = copy.deepcopy(ROLE)
    doc["actor"] = {"type": "user", "id": f"u-{n}", "email": f"user{n}@acme.test"}
    return doc


def test_go_reads_the_served_tiles_checkpoint_and_proofs(collector: RunningCollector) -> None:
    for start in range(0, EVENTS, 350):
        send(collector.grpc_target, [(_doc(n), None) for n in range(start, start + 350)])
    collector.call(collector.collector.make_checkpoints_now())
    headers = {"Authorization": f"Bearer {token(collector.conninfo, 'acme')}"}
    api = collector.api_url
    note = requests.get(api + "/v1/log/checkpoint", headers=headers, timeout=30).text
    vkey = requests.get(api + "/v1/log/key", headers=headers, timeout=30).text.splitlines()[0]
    with psycopg.connect(collector.conninfo) as conn:
        size = logdb.latest_checkpoint(conn, "acme").size  # type: ignore[union-attr]
        ids = {seq: str(i) for seq, i in conn.execute("SELECT seq, id FROM events WHERE tenant = 'acme' AND seq IN (1, 300, 700)")}
    proofs = {
        seq: requests.get(f"{api}/v1/events/{event_id}/proof", headers=headers, timeout=30).json() for seq, event_id in ids.items()
    }
    tlog_proofs = {
        seq: requests.get(f"{api}/v1/events/{event_id}/proof", params={"format": "tlog-proof"}, headers=headers, timeout=30).text
        for seq, event_id in ids.items()
    }
    checks: list[dict[str, Any]] = [
        {"kind": "note", "note": note, "vkey": vkey},
        # Go fetches the tiles over HTTP with the token, authenticates them against the signed
        # checkpoint, and builds its own proofs from them.
        {
            "kind": "tiles",
            "url": api + "/v1/log",
            "authorization": headers["Authorization"],
            "checkpoint": note,
            "vkey": vkey,
            "leaf_indexes": [seq - 1 for seq in sorted(ids)],
            "consistency_from": [1, 256, 300],
        },
    ]
    for seq in sorted(ids):
        checks.append({"kind": "tlog-proof", "text": tlog_proofs[seq], "vkey": vkey, "leaf_hash": proofs[seq]["leaf_hash"]})
    results = run_checks(checks)
    assert all(r["ok"] for r in results), [r["error"] for r in results]
    opened, tiles, *proved = results
    assert opened["text"].splitlines()[1] == str(size) and size >= EVENTS
    # Go's leaf hashes are the entries' hashes the API gave, and its proofs are the collector's, byte for byte.
    for n, seq in enumerate(sorted(ids)):
        assert tiles["leaf_hashes"][n] == proofs[seq]["leaf_hash"]
        assert merkle.leaf_hash(base64.b64decode(proofs[seq]["entry"])) == base64.b64decode(proofs[seq]["leaf_hash"])
        assert tiles["inclusion_proofs"][n] == proofs[seq]["proof"]
    for n, old in enumerate([1, 256, 300]):
        served = requests.get(api + "/v1/log/consistency", params={"old": old, "new": size}, headers=headers, timeout=30).json()
        assert tiles["consistency_proofs"][n] == served["proof"]
    assert [p["index"] for p in proved] == [seq - 1 for seq in sorted(ids)]
    # A tampered stored tile is caught by Go through the API.
    with psycopg.connect(collector.conninfo, autocommit=True) as conn:
        conn.execute("UPDATE log_tiles SET hashes = overlay(hashes placing '\\xff' from 40 for 1) WHERE tenant = 'acme' AND level = 0 AND idx = 1")
    (again,) = run_checks([checks[1]])
    assert not again["ok"], again
