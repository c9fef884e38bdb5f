"""otaudit_verify.bundle and the otaudit-verify command: export bundles that verify, and each tampering that must not.

Every bundle here is made with the package's own functions: events sealed and hashed by
``entry``, a tree and range proof from ``merkle``, a checkpoint signed by ``note``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from otaudit_verify import bundle as bundle_module
from otaudit_verify import merkle
from otaudit_verify.bundle import BundleError, BundleReport, verify_bundle, write_bundle
from otaudit_verify.checkpoint import Checkpoint, origin_for
from otaudit_verify.cli import main
from otaudit_verify.entry import entry_hash, erase, personal_pointers, seal
from otaudit_verify.note import Signer, generate_signer, sign_note

DEPLOYMENT = "otaudit.example"
TENANT = "acme"
ORIGIN = origin_for(DEPLOYMENT, TENANT)
TREE_SIZE = 40
SIGNER = generate_signer(ORIGIN)
VKEY = SIGNER.verifier().vkey()


def _doc(n: int, tenant: str = TENANT) -> dict[str, Any]:
    """A realistic stored event: an envelope with personal values (sealed) and details."""
    return {
        "id": f"01JEXAMPLE{n:06d}",
        "tenant": tenant,
        "category": "admin" if n % 3 == 0 else "access",
        "event": "role.granted" if n % 3 == 0 else "user.login",
        "occurred_at": f"2026-01-02T03:04:{n % 60:02d}.000000Z",
        "outcome": "success" if n % 5 else "denied",
        "actor": {"type": "user", "id": f"u-{n}", "email": f"user{n}@acme.test", "name": f"User {n}"},
        "client": {"address": f"192.0.2.{n % 250}", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"},
        "target": {"type": "role", "id": f"role-{n % 4}", "name": "Billing admin"},
        "source": {"service": "console", "instance": "console-1", "sequence": n},
        "details": {"via": "ui" if n % 2 else "api", "n": n, "ratio": n / 8, "note": "Zoë ✓"},
    }


def _salt(n: int) -> Callable[[int], bytes]:
    return lambda size: hashlib.sha256(b"salt %d" % n).digest()[:size]


@dataclass
class Log:
    """A tenant's log of TREE_SIZE events: their records, leaf hashes and signed checkpoint."""

    records: list[dict[str, Any]]
    leaves: list[bytes]
    note: str
    signer: Signer

    def hash_at(self, level: int, index: int) -> bytes:
        return merkle.root_of(self.leaves[index << level : (index + 1) << level])


def _make_log(size: int = TREE_SIZE, signer: Signer = SIGNER, origin: str = ORIGIN) -> Log:
    records: list[dict[str, Any]] = []
    for n in range(1, size + 1):
        doc = _doc(n)
        received = f"2026-01-02T03:05:{n % 60:02d}.{n:06d}Z"
        seals = seal(doc, personal_pointers(doc), random=_salt(n))
        if n == 7:  # a person's values erased later: the leaf stays the same
            doc, seals = erase(doc, seals, "/actor/email")
        records.append({"seq": n, "id": doc["id"], "received_at": received, "event": doc, "seals": seals})
    leaves = [entry_hash(r["event"], r["received_at"], r["seals"]) for r in records]
    note = sign_note(Checkpoint(origin, size, merkle.root_of(leaves)).text(), signer)
    return Log(records, leaves, note, signer)


LOG = _make_log()


def _write(
    path: Path,
    log: Log = LOG,
    first: int | None = 5,
    last: int | None = 30,
    keep: Callable[[dict[str, Any]], bool] = lambda record: record["event"]["category"] == "admin",
    **overrides: Any,
) -> Path:
    """A bundle of the log's leaves first..last, exporting the events ``keep`` selects."""
    if first is None or last is None:
        events: list[dict[str, Any]] = []
        leaves = proof = b""
    else:
        events = [r for r in log.records[first - 1 : last] if keep(r)]
        leaves = b"".join(log.leaves[first - 1 : last])
        proof = b"".join(merkle.range_proof(first - 1, last, len(log.leaves), log.hash_at))
    arguments: dict[str, Any] = {
        "tenant": TENANT,
        "origin": ORIGIN,
        "checkpoint_note": log.note,
        "keys": [log.signer.verifier().vkey()],
        "events": iter(copy.deepcopy(events)),
        "first_seq": first,
        "last_seq": last,
        "tree_size": len(log.leaves),
        "leaves": leaves,
        "range_proof": proof,
        "checkpoint_time": "2026-01-02T04:00:00.000000Z",
        "filters": {"category": "admin"},
        "created_at": "2026-01-03T00:00:00Z",
    }
    arguments.update(overrides)
    write_bundle(path, **arguments)
    return path


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return _write(tmp_path / "acme.zip")


# -- tampering helpers --------------------------------------------------------------------


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rewrite(path: Path, **changes: Callable[[bytes], bytes]) -> Path:
    """The bundle at ``path`` with members changed (``range_proof_bin`` for ``range-proof.bin``)."""
    members = _members(path)
    for key, change in changes.items():
        name = key.replace("_bin", ".bin").replace("_json", ".json").replace("_txt", ".txt").replace("_ndjson", ".ndjson")
        name = name.replace("range_proof", "range-proof")
        members[name] = change(members[name])
    out = path.with_name("tampered.zip")
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def _lines(change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]]) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        records = [json.loads(line) for line in data.decode().splitlines()]
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in change(records)).encode()

    return apply


def _manifest(**fields: Any) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **fields}).encode()

    return apply


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def apply(data: bytes) -> bytes:
        return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1 :]

    return apply


def _edit(records: list[dict[str, Any]], index: int, change: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    change(records[index])
    return records


def _exported(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _members(path)["events.ndjson"].decode().splitlines()]


def _fails(path: Path, match: str, keys: tuple[str, ...] = (VKEY,), **kw: Any) -> BundleError:
    with pytest.raises(BundleError, match=match) as info:
        verify_bundle(path, trusted_keys=keys, **kw)
    return info.value


# -- bundles that verify -------------------------------------------------------------------


def test_a_filtered_export_verifies_with_the_pinned_key(bundle: Path) -> None:
    exported = _exported(bundle)
    assert [r["seq"] for r in exported] == [6, 9, 12, 15, 18, 21, 24, 27, 30]
    assert exported[0]["seals"]["/actor/email"] == {"salt": base64.b64encode(_salt(6)(16)).decode()}
    report = verify_bundle(bundle, trusted_keys=[VKEY])
    assert report == BundleReport(
        tenant=TENANT,
        origin=ORIGIN,
        first_seq=5,
        last_seq=30,
        events=9,
        tree_size=TREE_SIZE,
        checkpoint_time="2026-01-02T04:00:00.000000Z",
        key=VKEY,
        key_pinned=True,
        root=merkle.root_of(LOG.leaves),
    )
    assert report.filters == {"category": "admin"} and report.created_at == "2026-01-03T00:00:00Z"
    summary = report.summary()
    for text in (
        "tenant 'acme'",
        ORIGIN,
        "9 exported",
        "seq 5 to 30",
        "tree of 40 leaves",
        "2026-01-02T04:00:00",
        VKEY,
        "pinned: a key you gave",
        "17 of them not exported",
        base64.b64encode(report.root).decode(),
    ):
        assert text in summary, (text, summary)
    assert "WARNING" not in summary


def test_without_a_key_it_uses_the_bundles_own_and_warns(bundle: Path) -> None:
    report = verify_bundle(bundle)
    assert report.key == VKEY and report.key_pinned is False
    assert "NOT pinned" in report.summary()
    assert report.summary().splitlines()[-1].startswith("WARNING: the key came from the bundle itself")


@pytest.mark.parametrize(("first", "last"), [(1, TREE_SIZE), (1, 1), (TREE_SIZE, TREE_SIZE), (17, 17), (8, 33), (1, 32)])
def test_every_range_shape_verifies_and_every_event_is_checked(tmp_path: Path, first: int, last: int) -> None:
    path = _write(tmp_path / "b.zip", first=first, last=last, keep=lambda record: True)
    report = verify_bundle(path, trusted_keys=[VKEY])
    assert (report.first_seq, report.last_seq, report.events) == (first, last, last - first + 1)
    assert "not exported" not in report.summary()


def test_an_erased_event_still_verifies(bundle: Path) -> None:
    (record,) = [r for r in LOG.records if r["seq"] == 7]
    assert record["event"]["actor"]["email"] == "[erased]" and "commitment" in record["seals"]["/actor/email"]
    path = _write(bundle.with_name("erased.zip"), first=7, last=7, keep=lambda r: True)
    assert verify_bundle(path, trusted_keys=[VKEY]).events == 1


def test_an_empty_export_verifies_only_the_checkpoint(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.zip", first=None, last=None)
    members = _members(path)
    assert members["events.ndjson"] == members["leaves.bin"] == members["range-proof.bin"] == b""
    report = verify_bundle(path, trusted_keys=[VKEY])
    assert (report.first_seq, report.last_seq, report.events, report.tree_size) == (None, None, 0, TREE_SIZE)
    assert "none (an empty export" in report.summary()
    with pytest.raises(BundleError, match="empty export has none"):
        verify_bundle(_rewrite(path, range_proof_bin=lambda _: LOG.leaves[0]), trusted_keys=[VKEY])


def test_the_bundle_holds_the_documented_members(bundle: Path) -> None:
    members = _members(bundle)
    assert set(members) == {"manifest.json", "checkpoint.txt", "key.txt", "events.ndjson", "leaves.bin", "range-proof.bin"}
    manifest = json.loads(members["manifest.json"])
    assert manifest == {
        "format": "otaudit-bundle/1",
        "tenant": TENANT,
        "origin": ORIGIN,
        "first_seq": 5,
        "last_seq": 30,
        "tree_size": TREE_SIZE,
        "checkpoint_time": "2026-01-02T04:00:00.000000Z",
        "events": 9,
        "filters": {"category": "admin"},
        "created_at": "2026-01-03T00:00:00Z",
    }
    assert members["checkpoint.txt"].decode() == LOG.note and members["key.txt"].decode() == VKEY + "\n"
    assert members["leaves.bin"] == b"".join(LOG.leaves[4:30])
    assert members["range-proof.bin"] == b"".join(merkle.range_proof(4, 30, TREE_SIZE, LOG.hash_at))
    line = members["events.ndjson"].decode().splitlines()[0]
    assert list(json.loads(line)) == ["seq", "id", "received_at", "event", "seals"]


def test_a_bundle_written_to_a_file_object_verifies_from_one(bundle: Path) -> None:
    buffer = io.BytesIO()
    _write(buffer, created_at=None)  # type: ignore[arg-type]
    assert json.loads(zipfile.ZipFile(buffer).read("manifest.json"))["created_at"].endswith("Z")
    buffer.seek(0)
    assert verify_bundle(buffer, trusted_keys=[VKEY]).events == 9


def test_progress_is_reported(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(bundle_module, "PROGRESS_EVERY", 4)
    monkeypatch.setattr(bundle_module, "_BLOCK", 3000)  # progress is taken between blocks of lines
    verify_bundle(bundle, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 9) and calls[-1] == (9, 9) and len(calls) >= 3
    assert calls == sorted(set(calls))


def test_several_processes_give_the_same_answers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of a few lines, checked by two worker processes: the same report, and the first error in the file."""
    monkeypatch.setattr(bundle_module, "_BLOCK", 3000)  # about three lines a block
    path = _write(tmp_path / "all.zip", first=1, last=TREE_SIZE, keep=lambda r: True)
    assert verify_bundle(path, workers=2) == verify_bundle(path, workers=1)
    # seqs 20 and 21 swapped between two lines: each line's event is another seq's leaf
    swapped = _rewrite(path, events_ndjson=_lines(lambda rs: [*rs[:19], {**rs[19], "seq": 21}, {**rs[20], "seq": 20}, *rs[21:]]))
    errors = {str(_fails(swapped, "seq 20: events were moved", workers=w)) for w in (1, 2)}
    assert len(errors) == 1
    # lines 30 and 31 in the wrong order, across a block boundary
    reordered = _rewrite(path, events_ndjson=_lines(lambda rs: [*rs[:29], rs[30], rs[29], *rs[31:]]))
    errors = {
        str(_fails(reordered, r"line 31, .* seq 30 does not come after the previous line's seq 31", workers=w)) for w in (1, 2)
    }
    assert len(errors) == 1
    altered = _rewrite(path, events_ndjson=_lines(lambda rs: _edit(rs, 35, lambda r: r["event"].update(outcome="failure"))))
    assert {str(_fails(altered, r"\(seq 36\) was altered", workers=w)) for w in (1, 2)} == {
        "event 01JEXAMPLE000036 (seq 36) was altered: its leaf hash does not match the leaf of seq 36 in leaves.bin"
    }


# -- tampering -----------------------------------------------------------------------------


def test_an_altered_event_value_fails(bundle: Path) -> None:
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: _edit(rs, 2, lambda r: r["event"].update(outcome="failure"))))
    error = _fails(tampered, r"event 01JEXAMPLE000012 \(seq 12\) was altered: its leaf hash does not match")
    assert "moved" not in str(error)
    nested = _rewrite(bundle, events_ndjson=_lines(lambda rs: _edit(rs, 0, lambda r: r["event"]["details"].update(n=7))))
    _fails(nested, r"\(seq 6\) was altered")
    # A personal value changed (it is committed, not in the leaf as itself) fails as well.
    personal = _rewrite(
        bundle, events_ndjson=_lines(lambda rs: _edit(rs, 1, lambda r: r["event"]["actor"].update(name="Mallory")))
    )
    _fails(personal, r"\(seq 9\) was altered")


def test_altered_seals_fail(bundle: Path) -> None:
    other_salt = base64.b64encode(bytes(16)).decode()
    salt = _rewrite(
        bundle, events_ndjson=_lines(lambda rs: _edit(rs, 3, lambda r: r["seals"]["/actor/email"].update(salt=other_salt)))
    )
    _fails(salt, r"event 01JEXAMPLE000015 \(seq 15\) was altered")
    dropped = _rewrite(bundle, events_ndjson=_lines(lambda rs: _edit(rs, 3, lambda r: r["seals"].pop("/actor/name"))))
    _fails(dropped, r"\(seq 15\) was altered")
    broken = _rewrite(
        bundle, events_ndjson=_lines(lambda rs: _edit(rs, 3, lambda r: r["seals"].update({"/actor/name": {"salt": "x"}})))
    )
    _fails(broken, r"\(seq 15\): its leaf entry cannot be made: salt of sealed pointer '/actor/name'")


def test_a_removed_event_line_fails_on_the_count(bundle: Path) -> None:
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: rs[:4] + rs[5:]))
    _fails(tampered, "events.ndjson has 8 events, but the manifest says 9")
    # ... and a manifest that says so too is a valid filtered export (the removed event is a hash).
    assert verify_bundle(_rewrite(tampered, manifest_json=_manifest(events=8)), trusted_keys=[VKEY]).events == 8


def test_an_added_event_fails(bundle: Path) -> None:
    extra = copy.deepcopy(LOG.records[6])  # seq 7: in the range, not exported
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: [*rs[:1], extra, *rs[1:]]), manifest_json=_manifest(events=10))
    assert verify_bundle(tampered).events == 10  # it is the log's own event: adding it proves no less
    forged = copy.deepcopy(extra)
    forged["event"]["outcome"] = "failure"
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: [*rs[:1], forged, *rs[1:]]), manifest_json=_manifest(events=10))
    _fails(tampered, r"\(seq 7\) was altered")


def test_swapped_seqs_fail(bundle: Path) -> None:
    def swap(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        records[2]["seq"], records[3]["seq"] = records[3]["seq"], records[2]["seq"]
        return records

    _fails(
        _rewrite(bundle, events_ndjson=_lines(swap)), r"\(seq 15\) was altered: .*; it is the leaf of seq 12: events were moved"
    )
    reordered = _rewrite(bundle, events_ndjson=_lines(lambda rs: [rs[1], rs[0], *rs[2:]]))
    _fails(reordered, r"line 2, event 01JEXAMPLE000006 \(seq 6\): seq 6 does not come after the previous line's seq 9")


def test_altered_leaves_fail(bundle: Path) -> None:
    # a leaf that was not exported (seq 5): only the root shows it
    _fails(
        _rewrite(bundle, leaves_bin=_flip(0)),
        r"the leaves of seq 5 to 30 and the range proof lead to root .*, not the checkpoint's",
    )
    # an exported event's leaf (seq 6): its event no longer matches it
    _fails(_rewrite(bundle, leaves_bin=_flip(32)), r"\(seq 6\) was altered")
    _fails(_rewrite(bundle, leaves_bin=lambda data: data[:-32]), r"leaves.bin is 800 bytes; seq 5 to 30 needs 832")


def test_a_truncated_or_altered_range_proof_fails(bundle: Path) -> None:
    _fails(_rewrite(bundle, range_proof_bin=lambda data: data[:-32]), r"range-proof.bin does not fit seq 5 to 30 .*too few")
    _fails(_rewrite(bundle, range_proof_bin=lambda data: data + data[:32]), r"range-proof.bin does not fit .* needs")
    _fails(_rewrite(bundle, range_proof_bin=lambda data: data[:-5]), r"not a multiple of 32")
    _fails(_rewrite(bundle, range_proof_bin=_flip(40)), r"lead to root .*, not the checkpoint's")


def test_a_checkpoint_signed_by_another_key_fails_with_the_pinned_key(tmp_path: Path) -> None:
    mallory = generate_signer(ORIGIN)  # same name, another key
    forged = _write(tmp_path / "forged.zip", log=_make_log(signer=mallory))
    error = _fails(forged, "not signed by any key you gave, but by the bundle's own key")
    assert mallory.verifier().vkey() in str(error)
    # Without a pinned key the forgery is self-consistent: which is why the summary warns.
    assert "WARNING" in verify_bundle(forged).summary()
    # A key given that verifies nothing, and a bundle key that does not verify the note either.
    other = generate_signer(ORIGIN).verifier().vkey()
    _fails(
        _rewrite(forged, key_txt=lambda _: (other + "\n").encode()),
        "not signed by any key you gave: note is not signed",
        keys=(VKEY,),
    )
    _fails(_rewrite(forged, key_txt=lambda _: (other + "\n").encode()), r"does not verify with the bundle's key.txt", keys=())
    # A rotated key: pass both, the one that signed verifies it.
    assert verify_bundle(forged, trusted_keys=[VKEY, mallory.verifier().vkey()]).key == mallory.verifier().vkey()


def test_an_altered_checkpoint_fails(bundle: Path) -> None:
    def bump(data: bytes) -> bytes:
        return data.replace(f"\n{TREE_SIZE}\n".encode(), f"\n{TREE_SIZE + 1}\n".encode(), 1)

    _fails(_rewrite(bundle, checkpoint_txt=bump), r"signature by 'otaudit.example/acme' .* does not verify")


def test_an_event_of_another_tenant_fails(bundle: Path) -> None:
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: _edit(rs, 4, lambda r: r["event"].update(tenant="globex"))))
    _fails(tampered, r"event 01JEXAMPLE000018 \(seq 18\) belongs to tenant 'globex', not the bundle's tenant 'acme'")


def test_a_checkpoint_of_another_origin_fails(tmp_path: Path) -> None:
    globex = origin_for(DEPLOYMENT, "globex")
    signer = generate_signer(globex)
    path = _write(tmp_path / "globex.zip", log=_make_log(signer=signer, origin=globex), origin=globex)
    _fails(path, "not signed by any key you gave")
    _fails(path, r"origin 'otaudit.example/globex' is the log of tenant 'globex', but the manifest says tenant 'acme'", keys=())
    relabelled = _rewrite(path, manifest_json=_manifest(origin=ORIGIN))
    _fails(
        relabelled,
        r"the checkpoint is for log 'otaudit.example/globex', but the manifest says origin 'otaudit.example/acme'",
        keys=(),
    )
    # A log key that signs under a name other than the origin.
    stray = generate_signer("elsewhere.example/acme")
    note = sign_note(Checkpoint(ORIGIN, TREE_SIZE, merkle.root_of(LOG.leaves)).text(), stray)
    odd = _rewrite(
        _write(tmp_path / "odd.zip"), checkpoint_txt=lambda _: note.encode(), key_txt=lambda _: stray.verifier().vkey().encode()
    )
    _fails(odd, r"signed by elsewhere.example/acme, not under its origin", keys=())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"manifest_json": _manifest(format="otaudit-bundle/2")}, "'otaudit-bundle/2' is not supported"),
        ({"manifest_json": _manifest(format="something")}, "this is not an otaudit bundle"),
        ({"manifest_json": lambda _: b"[1]"}, "manifest.json is not a JSON object"),
        ({"manifest_json": lambda d: d.replace(b'"tenant"', b'"tenant": "x", "tenant"', 1)}, "has the key 'tenant' twice"),
        ({"manifest_json": _manifest(tree_size=41)}, "the checkpoint's tree has 40 leaves, but the manifest says tree_size 41"),
        ({"manifest_json": _manifest(last_seq=41)}, "covers up to seq 41, beyond the checkpoint's tree of 40 leaves"),
        ({"manifest_json": _manifest(first_seq=0)}, "first_seq is 0, not an integer >= 1"),
        ({"manifest_json": _manifest(first_seq=None)}, "both are null"),
        ({"manifest_json": _manifest(events=True)}, "events is True, not an integer"),
        ({"manifest_json": _manifest(first_seq=6)}, r"leaves.bin is 832 bytes; seq 6 to 30 needs 800"),
        (
            {"events_ndjson": _lines(lambda rs: _edit(rs, 8, lambda r: r.update(seq=31)))},
            r"line 9, .*: seq 31 is outside the bundle's range seq 5 to 30",
        ),
        (
            {"events_ndjson": _lines(lambda rs: _edit(rs, 0, lambda r: r.update(seq=4)))},
            r"line 1, .*: seq 4 is outside the bundle's range seq 5 to 30",
        ),
        ({"key_txt": lambda _: b"not a key\n"}, "key.txt line 1 is not a verifier key"),
        ({"events_ndjson": lambda d: d.replace(b"\n", b"\n\n", 1)}, r"events.ndjson line 2 is not JSON \(Expecting value"),
        ({"events_ndjson": lambda d: d[:-1]}, r"events.ndjson line 9 does not end in a newline \(was the file truncated\?\)"),
        ({"events_ndjson": lambda d: d[:-40]}, r"events.ndjson line 9 does not end in a newline"),
        ({"events_ndjson": lambda d: d.replace(b"Zo\xc3\xab", b"Zo\xeb", 1)}, r"events.ndjson line 1 is not UTF-8"),
        (
            {"events_ndjson": _lines(lambda rs: _edit(rs, 1, lambda r: r.update(extra=1)))},
            "line 2 has keys an event line does not have: extra",
        ),
        ({"events_ndjson": _lines(lambda rs: _edit(rs, 1, lambda r: r.pop("seals")))}, "line 2 lacks seals"),
        (
            {"events_ndjson": _lines(lambda rs: _edit(rs, 1, lambda r: r.update(seq="9")))},
            r"line 2, event 01JEXAMPLE000009 \(seq 9\): seq is not an integer",
        ),
        ({"events_ndjson": _lines(lambda rs: _edit(rs, 1, lambda r: r.update(seals=[])))}, "seals is not a JSON object"),
        (
            {"events_ndjson": _lines(lambda rs: _edit(rs, 1, lambda r: r.update(id="someone-else")))},
            "the line says id 'someone-else' but the event's own id",
        ),
        ({"events_ndjson": lambda d: d + b"5\n"}, "line 10 is int JSON, not an object"),
    ],
)
def test_a_malformed_bundle_fails(bundle: Path, changes: dict[str, Callable[[bytes], bytes]], match: str) -> None:
    _fails(_rewrite(bundle, **changes), match)


def test_missing_members_and_non_zips_fail(bundle: Path, tmp_path: Path) -> None:
    members = _members(bundle)
    del members["range-proof.bin"]
    partial = tmp_path / "partial.zip"
    with zipfile.ZipFile(partial, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    _fails(partial, "the bundle lacks range-proof.bin")
    text = tmp_path / "export.csv"
    text.write_text("id,tenant\n")
    _fails(text, "not a zip file")
    with pytest.raises(BundleError, match="trusted key 'nope' is not a verifier key"):
        verify_bundle(bundle, trusted_keys=["nope"])


def test_write_bundle_refuses_what_cannot_verify(tmp_path: Path) -> None:
    path = tmp_path / "bad.zip"
    backwards = [LOG.records[9], LOG.records[8]]
    with pytest.raises(BundleError, match="not increasing"):
        _write(path, first=1, last=20, events=iter(backwards))
    assert not path.exists()  # the partial file is removed
    with pytest.raises(BundleError, match="leaves is 32 bytes"):
        _write(path, leaves=LOG.leaves[0])
    with pytest.raises(BundleError, match=r"not 'otaudit\.example/globex' at size 40"):
        _write(path, origin=origin_for(DEPLOYMENT, "globex"))
    with pytest.raises(BundleError, match="is not a range of leaves"):
        _write(path, last_seq=41)


# -- the command ---------------------------------------------------------------------------


def test_cli_verifies_and_prints_the_summary(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(bundle), "--key", VKEY]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("OK: otaudit bundle of tenant 'acme'") and "pinned: a key you gave" in out and "WARNING" not in out
    assert err == ""
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# acme's log\n{generate_signer(ORIGIN).verifier().vkey()}\n\n{VKEY}\n")
    assert main([str(bundle), "--key-file", str(key_file)]) == 0
    assert "pinned" in capsys.readouterr().out
    assert main([str(bundle)]) == 0
    assert "WARNING: the key came from the bundle itself" in capsys.readouterr().out
    assert main([str(bundle), "--key", VKEY, "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_cli_failures_and_usage(bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tampered = _rewrite(bundle, events_ndjson=_lines(lambda rs: _edit(rs, 2, lambda r: r["event"].update(outcome="failure"))))
    assert main([str(tampered), "--key", VKEY]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("otaudit-verify: FAILED: event 01JEXAMPLE000012 (seq 12) was altered")
    assert main([str(tampered), "--quiet"]) == 1
    assert "FAILED" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.zip")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main([str(bundle), "--key", "nope"]) == 2
    assert "--key: 'nope' is not a verifier key" in capsys.readouterr().err
    assert main([str(bundle), "--key-file", str(tmp_path / "nokeys")]) == 2
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_runs_as_a_module(bundle: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "otaudit_verify.cli", str(bundle), "--key", VKEY],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "9 exported" in run.stdout and run.stderr == ""
