"""The log's keys, checkpoints and witnesses: what signs and publishes each tenant's tree.

- **Keys.** One Ed25519 deployment key signs every tenant's checkpoints, under the tenant's
  origin (``<deployment>/<tenant>``) as the signed-note key name. It comes from
  ``integrity.signing_key`` (``OTAUDIT_SIGNING_KEY``), else ``integrity.signing_key_file``
  (made at first start when missing), else a key kept in the database (made at first
  start). It is never logged. ``integrity.trusted_keys`` lists the verifier keys of earlier
  signing keys, so their checkpoints still verify after a rotation.
- **Checkpoints.** Every ``checkpoint_seconds`` one collector (an advisory lock) signs a
  checkpoint for each tenant whose tree outgrew its latest one. Before signing it checks
  that the tree, as its tiles now say, still has the root of the last checkpoint kept and
  of the last one each witness folder holds: a log must never sign a checkpoint
  inconsistent with one it published.
- **Witnesses.** Each new checkpoint is written to ``witness_dir`` (a file per checkpoint,
  created once, never rewritten) and posted to each C2SP tlog-witness URL with its
  consistency proof from the size that witness last saw.
"""

from __future__ import annotations

import base64
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otaudit_collector.storage import log as logdb
from otaudit_verify import merkle
from otaudit_verify.checkpoint import Checkpoint, CheckpointError, origin_for, parse_checkpoint
from otaudit_verify.note import (
    NoteError,
    Signer,
    Verifier,
    load_signer_seed,
    open_note,
    parse_verifier_key,
    seed_text,
    sign_note,
)

__all__ = ["LogKeys", "load_log_keys", "Witnesses", "make_checkpoints", "CheckpointRefused"]

log = logging.getLogger(__name__)

_CHECKPOINT_LOCK = 0x6F746C6F67  # "otlog": one collector signs at a time


class CheckpointRefused(RuntimeError):
    """The tree no longer has the root of a checkpoint already published: nothing is signed."""


@dataclass(frozen=True, slots=True)
class LogKeys:
    """The deployment's signing key and the verifier keys it trusts, per tenant origin."""

    deployment: str
    key: Ed25519PrivateKey = field(repr=False)
    trusted: tuple[Verifier, ...] = ()
    source: str = ""
    """Where the key came from, for the start-up line: never the key itself."""

    def origin(self, tenant: str) -> str:
        return origin_for(self.deployment, tenant)

    def signer(self, tenant: str) -> Signer:
        return Signer(self.origin(tenant), self.key)

    def verifiers(self, tenant: str) -> list[Verifier]:
        """The current key's verifier for the tenant, then the trusted earlier keys (under the tenant's origin)."""
        origin = self.origin(tenant)
        found = [self.signer(tenant).verifier()]
        for earlier in self.trusted:
            named = Verifier(origin, earlier.public_key)
            if named not in found:
                found.append(named)
        return found

    @property
    def public_key_b64(self) -> str:
        return base64.b64encode(self.signer("x").public_key).decode("ascii")


def _deployment(conn: psycopg.Connection[Any], configured: str | None) -> str:
    if configured:
        return configured
    conn.execute(
        "INSERT INTO server_keys (name, secret) VALUES ('install_id', uuid_send(gen_random_uuid())) ON CONFLICT (name) DO NOTHING"
    )
    row = conn.execute("SELECT secret FROM server_keys WHERE name = 'install_id'").fetchone()
    assert row is not None
    return f"otaudit.local/{bytes(row[0])[:6].hex()}"


def load_log_keys(settings: Any, conninfo: str) -> LogKeys:
    """The signing key and deployment name as configured (see the module's docstring)."""
    config = settings.get("integrity")
    trusted = tuple(parse_verifier_key(text) for text in config["trusted_keys"])
    with psycopg.connect(conninfo, autocommit=True) as conn:
        deployment = _deployment(conn, config["deployment"])
        if config["signing_key"]:
            return LogKeys(
                deployment, load_signer_seed(config["signing_key"]), trusted, "OTAUDIT_SIGNING_KEY / integrity.signing_key"
            )
        if config["signing_key_file"]:
            path = Path(config["signing_key_file"])
            if not path.exists():
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as out:
                    out.write(seed_text(Ed25519PrivateKey.generate()) + "\n")
            return LogKeys(deployment, load_signer_seed(path.read_text().strip()), trusted, str(path))
        fresh = base64.b64decode(seed_text(Ed25519PrivateKey.generate()))
        conn.execute("INSERT INTO server_keys (name, secret) VALUES ('log_signing', %s) ON CONFLICT (name) DO NOTHING", (fresh,))
        row = conn.execute("SELECT secret FROM server_keys WHERE name = 'log_signing'").fetchone()
        assert row is not None
        key = load_signer_seed(base64.b64encode(bytes(row[0])).decode("ascii"))
        return LogKeys(deployment, key, trusted, "the database (server_keys.log_signing)")


# -- witnesses ---------------------------------------------------------------------------


class Witnesses:
    """Where checkpoints are published besides the database: a folder, C2SP tlog-witness URLs."""

    def __init__(self, folder: str | None = None, urls: Sequence[str] = (), timeout: float = 10.0) -> None:
        self.folder = Path(folder) if folder else None
        self.urls = list(urls)
        self.timeout = timeout
        self._witnessed: dict[tuple[str, str], int] = {}  # (url, origin) -> size that witness last accepted
        self._latest: dict[str, tuple[int, str]] = {}  # origin -> the last checkpoint this process wrote to the folder

    def tenant_dir(self, origin: str) -> Path:
        assert self.folder is not None
        return self.folder / quote(origin, safe="")

    def published(self, origin: str) -> list[tuple[int, str]]:
        """(size, note) of every checkpoint in the witness folder for ``origin``, smallest first."""
        if self.folder is None:
            return []
        folder = self.tenant_dir(origin)
        if not folder.is_dir():
            return []
        found = []
        for entry in os.scandir(folder):
            if _is_checkpoint_name(entry.name):
                found.append((int(entry.name[: -len(".checkpoint")]), Path(entry.path).read_text(encoding="utf-8")))
        return sorted(found)

    def latest(self, origin: str) -> tuple[int, str] | None:
        """The largest checkpoint in the witness folder for ``origin``: the file names are read, one file is."""
        if self.folder is None:
            return None
        known = self._latest.get(origin)
        if known is not None:
            return known
        folder = self.tenant_dir(origin)
        if not folder.is_dir():
            return None
        sizes = [int(entry.name[: -len(".checkpoint")]) for entry in os.scandir(folder) if _is_checkpoint_name(entry.name)]
        if not sizes:
            return None
        size = max(sizes)
        found = self._latest[origin] = (size, (folder / f"{size}.checkpoint").read_text(encoding="utf-8"))
        return found

    def write(self, origin: str, size: int, note: str) -> None:
        """Write the checkpoint once; an existing file is never replaced (a different one is an error)."""
        if self.folder is None:
            return
        folder = self.tenant_dir(origin)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{size}.checkpoint"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            if path.read_text(encoding="utf-8") != note:
                raise CheckpointRefused(f"{path} already holds a different checkpoint of size {size}") from None
            return
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(note)
            out.flush()
            os.fsync(out.fileno())
        self._latest[origin] = (size, note)

    def post(self, origin: str, size: int, note: str, proof_from: Any) -> None:
        """Post to each witness URL (C2SP tlog-witness add-checkpoint). ``proof_from(old)``: the
        consistency proof from ``old`` to ``size``. A failure is logged; the next checkpoint retries."""
        for url in self.urls:
            old = self._witnessed.get((url, origin), 0)
            for _ in range(2):
                proof = proof_from(old) if 0 < old < size else []
                body = f"old {old}\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n" + note
                request = urllib.request.Request(
                    url.rstrip("/") + "/add-checkpoint",
                    data=body.encode("utf-8"),
                    method="POST",
                    headers={"Content-Type": "text/plain; charset=utf-8"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                        answer.read()
                    self._witnessed[(url, origin)] = size
                    break
                except urllib.error.HTTPError as exc:
                    text = exc.read().decode("utf-8", "replace").strip()
                    if exc.code == 409 and text.isdigit() and int(text) != old:  # the witness knows another size
                        old = int(text)
                        continue
                    log.error(
                        "a witness refused a checkpoint",
                        extra={"witness": url, "origin": origin, "size": size, "status": exc.code, "answer": text[:200]},
                    )
                    break
                except OSError as exc:
                    log.warning(
                        "a witness could not be reached; the next checkpoint tries again",
                        extra={"witness": url, "error": str(exc)},
                    )
                    break


def _is_checkpoint_name(name: str) -> bool:
    return name.endswith(".checkpoint") and name[: -len(".checkpoint")].isdigit()


# -- making checkpoints --------------------------------------------------------------------


def make_checkpoints(conninfo: str, keys: LogKeys, witnesses: Witnesses, tenants: Iterable[str] | None = None) -> list[str]:
    """Sign a checkpoint for every tenant whose tree outgrew its latest one; returns their tenants.

    One collector at a time (a session advisory lock; another collector returns at once). A
    tenant whose tree is inconsistent with what was published is logged and skipped.
    """
    done: list[str] = []
    only = set(tenants) if tenants is not None else None
    with psycopg.connect(conninfo, autocommit=True) as conn:
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (_CHECKPOINT_LOCK,)).fetchone()
        if not locked or not locked[0]:
            return done
        try:
            for tenant, size, _last in logdb.tenants_to_checkpoint(conn):
                if only is not None and tenant not in only:
                    continue
                try:
                    if checkpoint_tenant(conn, keys, witnesses, tenant, size):
                        done.append(tenant)
                except (CheckpointRefused, logdb.LogCorrupt, NoteError, CheckpointError, OSError) as exc:
                    log.error(
                        "no checkpoint signed for a tenant this round: its log disagrees with what was published,"
                        " or the witness folder cannot take it",
                        extra={"tenant": tenant, "error": str(exc)},
                    )
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_CHECKPOINT_LOCK,))
    return done


def checkpoint_tenant(conn: psycopg.Connection[Any], keys: LogKeys, witnesses: Witnesses, tenant: str, size: int) -> bool:
    source = logdb.TileSource(conn, tenant)
    origin = keys.origin(tenant)
    previous = logdb.latest_checkpoint(conn, tenant)
    checks = [] if previous is None else [(previous.size, previous.root, "the last checkpoint kept")]
    witnessed = witnesses.latest(origin)
    if witnessed is not None:
        checkpoint = parse_checkpoint(open_note(witnessed[1], keys.verifiers(tenant)).text)
        checks.append((witnessed[0], checkpoint.root, f"the witness folder's checkpoint {witnessed[0]}"))
    for old, root, what in checks:
        if old > size:
            raise CheckpointRefused(f"{what} has {old} leaves, more than the tree's {size}")
        if source.root(old) != root:
            raise CheckpointRefused(f"the tree's root at size {old} is not the root of {what}")
    root = source.root(size)
    signer = keys.signer(tenant)
    note = sign_note(Checkpoint(origin, size, root).text(), signer)
    # Published first: a checkpoint the folder cannot take is not kept either, and is signed again next round.
    witnesses.write(origin, size, note)
    if not logdb.store_checkpoint(conn, tenant, size, root, note, signer.verifier().vkey()):
        return False
    if witnesses.urls:
        hash_at = source.hash_at(size)
        witnesses.post(origin, size, note, lambda old: merkle.consistency_proof(old, size, hash_at))
    return True
