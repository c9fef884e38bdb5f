"""The SDK's write-ahead buffer on its own: segments, acknowledgement offsets, adoption
of what a dead process left, damaged files, and the size limit."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from otaudit_sdk import _buffer
from otaudit_sdk._buffer import BufferFull, FileBuffer, MemoryBuffer


def buffer(folder: Path, instance: str = "a", **options: int | bool) -> FileBuffer:
    settings = {"max_bytes": 1 << 20, "segment_bytes": 1 << 16, "fsync_each": False, **options}
    return FileBuffer(folder, resource=f"resource-{instance}".encode(), instance=instance, **settings)  # type: ignore[arg-type]


def payloads(n: int, start: int = 0) -> list[bytes]:
    return [f"record-{i:05d}".encode() * 3 for i in range(start, start + n)]


def drain(buf: FileBuffer | MemoryBuffer, max_records: int = 1000) -> list[bytes]:
    out: list[bytes] = []
    while (batch := buf.take(max_records, 1 << 20)) is not None and batch.records:
        out.extend(batch.records)
        buf.done(batch)
    return out


def test_records_come_out_in_order_and_delivered_segments_are_deleted(tmp_path: Path) -> None:
    buf = buffer(tmp_path, segment_bytes=2000)
    records = payloads(300)
    for i, rec in enumerate(records):
        buf.append(rec, 1000 + i)
    assert len(list(tmp_path.glob("*.wal"))) > 3  # rolled at segment_bytes
    assert buf.pending[0] == 300
    assert buf.oldest_ns() == 1000
    batch = buf.take(7, 1 << 20)
    assert batch is not None and batch.records == records[:7] and batch.resource == b"resource-a"
    buf.done(batch)
    assert buf.oldest_ns() == 1007
    assert drain(buf, 50) == records[7:]
    assert buf.pending == (0, 0)
    assert len(list(tmp_path.glob("*.wal"))) == 1  # only the active segment is left
    buf.close()
    assert list(tmp_path.glob("*.wal")) == []


def test_a_dead_process_leaves_its_records_to_the_next_one(tmp_path: Path) -> None:
    first = buffer(tmp_path, "first", segment_bytes=600)
    records = payloads(40)
    for rec in records:
        first.append(rec, 1)
    batch = first.take(15, 1 << 20)
    assert batch is not None
    delivered = len(batch.records)  # a batch stays within one segment
    first.done(batch)
    first.close()  # what a dying process leaves: files on disk, locks released

    second = buffer(tmp_path, "second")
    assert second.adopt_orphans() == 40 - delivered
    batch = second.take(1000, 1 << 20)
    assert batch is not None and batch.resource == b"resource-first"  # sent as recorded
    assert drain(second) == records[delivered:]
    assert list(tmp_path.glob("first-*.wal")) == []


def test_a_live_process_keeps_its_segments(tmp_path: Path) -> None:
    alive = buffer(tmp_path, "alive")
    alive.append(b"mine", 1)
    other = buffer(tmp_path, "other")
    assert other.adopt_orphans() == 0
    assert drain(alive) == [b"mine"]


def test_a_torn_tail_is_reported_and_the_intact_records_are_sent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = buffer(tmp_path, "first")
    records = payloads(5)
    for rec in records:
        first.append(rec, 1)
    first.close()
    [path] = tmp_path.glob("*.wal")
    data = path.read_bytes()
    path.write_bytes(data[:-7])  # the last frame cut short, as by a power loss
    with caplog.at_level(logging.ERROR, "otaudit_sdk"):
        second = buffer(tmp_path, "second")
        assert second.adopt_orphans() == 4
    assert drain(second) == records[:4]
    assert "are damaged (a write torn by a crash)" in caplog.text


def test_a_corrupt_acknowledgement_offset_resends_rather_than_skips(tmp_path: Path) -> None:
    first = buffer(tmp_path, "first")
    records = payloads(6)
    for rec in records:
        first.append(rec, 1)
    batch = first.take(2, 1 << 20)
    assert batch is not None
    first.done(batch)
    first.close()
    [path] = tmp_path.glob("*.wal")
    with path.open("r+b") as f:
        f.seek(8)
        f.write((12345).to_bytes(8, "little"))  # not a frame boundary
    second = buffer(tmp_path, "second")
    assert second.adopt_orphans() == 6  # resent from the start: the collector drops duplicates
    assert drain(second) == records


def test_a_foreign_file_is_set_aside_not_sent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "junk.wal").write_bytes(b"not a buffer segment at all")
    with caplog.at_level(logging.ERROR, "otaudit_sdk"):
        buf = buffer(tmp_path)
        assert buf.adopt_orphans() == 0
    assert (tmp_path / "junk.damaged").exists()
    assert "is not a buffer segment" in caplog.text


def test_the_size_limit_refuses_instead_of_dropping(tmp_path: Path) -> None:
    buf = buffer(tmp_path, max_bytes=1000)
    kept = 0
    with pytest.raises(BufferFull, match=r"holds \d+ undelivered events \(\d+ bytes, limit 1000\)"):
        for rec in payloads(100):
            buf.append(rec, 1)
            kept += 1
    assert buf.pending[0] == kept
    batch = buf.take(1, 1 << 20)
    assert batch is not None
    buf.done(batch)
    buf.append(b"room again", 1)
    assert len(drain(buf)) == kept


def test_fsync_mode_writes_through(tmp_path: Path) -> None:
    buf = buffer(tmp_path, fsync_each=True)
    buf.append(b"durable", 5)
    [path] = tmp_path.glob("*.wal")
    assert path.read_bytes().endswith(b"durable")
    assert os.stat(path).st_mode & 0o777 == 0o600  # audit data is private to the service's user


def test_memory_buffer_batches_and_limits() -> None:
    buf = MemoryBuffer(b"res", max_bytes=100)
    for rec in (b"a" * 30, b"b" * 30, b"c" * 30):
        buf.append(rec, 1)
    with pytest.raises(BufferFull):
        buf.append(b"d" * 30, 2)
    batch = buf.take(2, 1 << 20)
    assert batch is not None and batch.records == [b"a" * 30, b"b" * 30]
    buf.done(batch)
    assert drain(buf) == [b"c" * 30]
    assert buf.oldest_ns() is None


def test_a_fully_delivered_segment_of_a_dead_process_is_not_sent_again(tmp_path: Path) -> None:
    first = buffer(tmp_path, "first")
    for rec in payloads(5):
        first.append(rec, 1)
    assert len(drain(first)) == 5
    for seg in first._segments:  # the process dies: descriptors closed, nothing else done
        os.close(seg.fd)
    assert len(list(tmp_path.glob("first-*.wal"))) == 1
    second = buffer(tmp_path, "second")
    assert second.adopt_orphans() == 0
    assert list(tmp_path.glob("first-*.wal")) == []


def test_orphans_are_adopted_only_while_there_is_room(tmp_path: Path) -> None:
    for name in ("one", "two"):
        dead = buffer(tmp_path, name)
        for rec in payloads(20):
            dead.append(rec, 1)
        dead.close()
    size = sum(p.stat().st_size for p in tmp_path.glob("*.wal")) // 2
    heir = buffer(tmp_path, "heir", max_bytes=size + size // 2)
    assert heir.adopt_orphans() == 20  # the second would pass the limit: it waits on disk
    assert len(drain(heir)) == 20
    assert heir.adopt_orphans() == 20
    assert len(drain(heir)) == 20


def test_a_segment_left_half_created_is_cleaned_up(tmp_path: Path) -> None:
    dead = tmp_path / "dead-000001.new"
    dead.write_bytes(b"OTAUDWAL")
    old = time.time() - _buffer.UNFINISHED_GRACE_SECONDS - 1
    os.utime(dead, (old, old))
    buf = buffer(tmp_path)
    buf.adopt_orphans()
    assert list(tmp_path.glob("*.new")) == []


def test_a_segment_being_created_by_a_live_process_is_left_alone(tmp_path: Path) -> None:
    """Another process between its O_EXCL open and its flock holds no lock yet (a forked
    worker starting beside its siblings): its young file must survive, or its rename fails."""
    making = tmp_path / "sibling-000001.new"
    fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        buf = buffer(tmp_path)
        buf.adopt_orphans()
        assert making.exists()
        os.rename(making, making.with_suffix(".wal"))  # what the sibling does next
    finally:
        os.close(fd)


def test_a_closed_buffer_takes_and_acknowledges_nothing(tmp_path: Path) -> None:
    buf = buffer(tmp_path)
    buf.append(b"late", 1)
    batch = buf.take(10, 1 << 20)
    assert batch is not None
    buf.close()
    buf.done(batch)  # the answer came after close(): the next process sends it again
    assert buf.take(10, 1 << 20) is None
    heir = buffer(tmp_path, "heir")
    assert heir.adopt_orphans() == 1
