"""The write-ahead buffer: encoded records wait here until the collector has them.

``FileBuffer`` (the default) appends each record to a segment file before ``record()``
returns, so a record survives the process dying; ``MemoryBuffer`` keeps them in memory
only, when the caller explicitly chose that.

A segment file::

    b"OTAUDWAL"  u64 acked-offset            (16-byte header, the offset rewritten in place)
    frame: u32 length, u32 crc32, u64 appended-at ns, payload
    frame 0 is the Resource the records were recorded under; the rest are LogRecords

Each process writes its own segments (``<instance>-<n>.wal``) and holds an exclusive
``flock`` on each until it is delivered and deleted. A segment whose lock is free
belongs to a process that died: any process using the same directory adopts and sends
it. A damaged tail (a torn write at power loss) is reported, never sent as garbage.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Batch", "Buffer", "BufferFull", "FileBuffer", "MemoryBuffer"]

_log = logging.getLogger("otaudit_sdk")

_MAGIC = b"OTAUDWAL"
_HEADER = 16
_FRAME = struct.Struct("<IIQ")
_OFFSET = struct.Struct("<Q")


class BufferFull(Exception):
    """The buffer holds its limit of undelivered bytes; raised from ``append``."""


@dataclass(slots=True)
class _Segment:
    path: Path | None
    fd: int
    resource: bytes
    written: int  # end of the last complete frame
    acked: int  # offset of the first unacknowledged frame
    count: int  # unacknowledged records
    sealed: bool = False
    adopted: bool = False


@dataclass(slots=True)
class Batch:
    """Records of one resource, oldest first, taken from the buffer but not yet acknowledged."""

    resource: bytes
    records: list[bytes]
    size: int
    first_ns: int
    segment: _Segment | None = field(default=None, repr=False)
    end: int = 0


class Buffer:
    """What the client and the sender need from a buffer."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.has_data = threading.Event()
        self._lock = threading.Lock()
        self._bytes = 0
        self._count = 0

    def append(self, record: bytes, now_ns: int) -> None:
        raise NotImplementedError

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        raise NotImplementedError

    def done(self, batch: Batch) -> None:
        raise NotImplementedError

    def oldest_ns(self) -> int | None:
        raise NotImplementedError

    def sync(self) -> None:
        """Make what was appended durable on disk (nothing to do in memory)."""

    def adopt_orphans(self) -> int:
        """Take over segments left by processes that died; returns how many records they hold."""
        return 0

    def reset_after_fork(self, resource: bytes, instance: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the buffer; what is undelivered stays for the next process (on disk)."""

    @property
    def pending(self) -> tuple[int, int]:
        """(records, bytes) not yet acknowledged."""
        return self._count, self._bytes

    def _check_room(self, size: int) -> None:
        if self._bytes + size > self.max_bytes:
            raise BufferFull(
                f"the audit buffer holds {self._count} undelivered events ({self._bytes} bytes, limit {self.max_bytes})"
            )


class MemoryBuffer(Buffer):
    """Records in memory: lost if the process dies. Only when ``durability='memory'``."""

    def __init__(self, resource: bytes, max_bytes: int) -> None:
        super().__init__(max_bytes)
        self._resource = resource
        self._items: collections.deque[tuple[int, bytes]] = collections.deque()

    def append(self, record: bytes, now_ns: int) -> None:
        with self._lock:
            self._check_room(len(record))
            self._items.append((now_ns, record))
            self._bytes += len(record)
            self._count += 1
        if not self.has_data.is_set():
            self.has_data.set()

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        with self._lock:
            if not self._items:
                self.has_data.clear()
                return None
            records: list[bytes] = []
            size = 0
            for _ns, rec in self._items:
                if records and (len(records) >= max_records or size + len(rec) > max_bytes):
                    break
                records.append(rec)
                size += len(rec)
            return Batch(self._resource, records, size, self._items[0][0])

    def done(self, batch: Batch) -> None:
        with self._lock:
            for _ in batch.records:
                self._items.popleft()
            self._count -= len(batch.records)
            self._bytes -= batch.size

    def oldest_ns(self) -> int | None:
        with self._lock:
            return self._items[0][0] if self._items else None

    def reset_after_fork(self, resource: bytes, instance: str) -> None:
        self.__init__(resource, self.max_bytes)  # type: ignore[misc]


class FileBuffer(Buffer):
    """Segment files in ``directory``; see the module docstring for the format."""

    def __init__(
        self,
        directory: Path,
        *,
        resource: bytes,
        instance: str,
        max_bytes: int,
        segment_bytes: int,
        fsync_each: bool,
    ) -> None:
        super().__init__(max_bytes)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = directory / f".{instance}.probe"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OSError(f"the audit buffer directory {directory} is not writable ({exc.strerror}); set buffer_dir") from exc
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_each = fsync_each
        self._resource = resource
        self._instance = instance
        self._serial = 0
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._dirty = False
        self._closed = False

    # -- writing (caller threads) ------------------------------------------------------

    def append(self, record: bytes, now_ns: int) -> None:
        frame = _frame(record, now_ns)
        with self._lock:
            self._check_room(len(frame))
            seg = self._active
            if seg is None or seg.written >= self.segment_bytes:
                seg = self._new_segment()
            _write_all(seg.fd, frame, seg.written)
            if self.fsync_each:
                os.fdatasync(seg.fd)
            else:
                self._dirty = True
            seg.written += len(frame)
            seg.count += 1
            self._count += 1
            self._bytes += len(frame)
        if not self.has_data.is_set():  # waking the sender is the costly part
            self.has_data.set()

    def _new_segment(self) -> _Segment:
        if self._closed:
            raise BufferFull("the audit buffer is closed")
        if self._active is not None:
            if self._dirty:  # what the interval sync would have covered
                os.fdatasync(self._active.fd)
                self._dirty = False
            self._active.sealed = True
            self._release_if_done(self._active)
        self._serial += 1
        path = self.directory / f"{self._instance}-{self._serial:06d}.wal"
        # Locked and complete before it gets its .wal name, so no other process sees it unowned.
        making = path.with_suffix(".new")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        start = _HEADER + _FRAME.size + len(self._resource)
        _write_all(fd, _MAGIC + _OFFSET.pack(start) + _frame(self._resource, 0), 0)
        os.rename(making, path)
        if self.fsync_each:  # the new name must survive a power loss too
            os.fsync(fd)
            folder = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        seg = _Segment(path, fd, self._resource, start, start, 0)
        self._segments.append(seg)
        self._active = seg
        return seg

    def sync(self) -> None:
        with self._lock:
            if not self._dirty or self._active is None or self._closed:
                return
            self._dirty = False
            os.fdatasync(self._active.fd)  # under the lock: close() must not close it meanwhile

    # -- sending (the sender thread) ---------------------------------------------------

    def take(self, max_records: int, max_bytes: int) -> Batch | None:
        with self._lock:
            seg = next((s for s in self._segments if s.count), None)
            if seg is None or self._closed:
                self.has_data.clear()
                return None
            start, end, fd, resource = seg.acked, seg.written, seg.fd, seg.resource
        # Read outside the lock, so appends do not wait: the sender is the only reader, and
        # close() comes after the sender has stopped.
        data = os.pread(fd, min(end - start, max(max_bytes, 1 << 16)), start)
        records: list[bytes] = []
        size = 0
        first_ns = 0
        pos = 0
        while pos + _FRAME.size <= len(data) and len(records) < max_records:
            length, _crc, ns = _FRAME.unpack_from(data, pos)
            stop = pos + _FRAME.size + length
            if stop > len(data):
                if records:
                    break
                data += os.pread(fd, stop - len(data), start + len(data))  # one record larger than the read
            if records and size + length > max_bytes:
                break
            records.append(data[pos + _FRAME.size : stop])
            first_ns = first_ns or ns
            size += stop - pos
            pos = stop
        return Batch(resource, records, size, first_ns, seg, start + pos)

    def done(self, batch: Batch) -> None:
        seg = batch.segment
        assert seg is not None
        with self._lock:
            if self._closed:  # delivered after close(): sent again by the next process, stored once
                return
            seg.acked = batch.end
            seg.count -= len(batch.records)
            self._count -= len(batch.records)
            self._bytes -= batch.size
            if seg.fd >= 0:
                os.pwrite(seg.fd, _OFFSET.pack(seg.acked), 8)
                self._release_if_done(seg)

    def _release_if_done(self, seg: _Segment) -> None:
        if seg.count or not seg.sealed:
            return
        if seg.path is not None:
            seg.path.unlink(missing_ok=True)
        os.close(seg.fd)
        seg.fd = -1
        self._segments.remove(seg)

    def oldest_ns(self) -> int | None:
        with self._lock:
            seg = next((s for s in self._segments if s.count), None)
            if seg is None:
                return None
            head = os.pread(seg.fd, _FRAME.size, seg.acked)
        return int(_FRAME.unpack(head)[2]) if len(head) == _FRAME.size else None

    # -- recovery -----------------------------------------------------------------------

    def adopt_orphans(self) -> int:
        with self._lock:
            mine = {s.path for s in self._segments}
        adopted = 0
        _remove_unfinished(self.directory, self._instance)
        for path in sorted(self.directory.glob("*.wal"), key=_age):
            if path in mine:
                continue
            seg = _adopt(path)
            if seg is None:
                continue
            with self._lock:
                if seg.count and self._bytes and self._bytes + seg.written - seg.acked > self.max_bytes:
                    os.close(seg.fd)  # no room now: leave it on disk for later (or another process)
                elif seg.count:
                    self._segments.insert(sum(1 for s in self._segments if s.adopted), seg)
                    self._count += seg.count
                    self._bytes += seg.written - seg.acked
                    adopted += seg.count
                else:
                    _discard(seg)
        if adopted:
            self.has_data.set()
        return adopted

    def reset_after_fork(self, resource: bytes, instance: str) -> None:
        """In a forked child: forget the parent's segments (closing our copies of its
        descriptors keeps its locks) and start our own under a new instance id."""
        for seg in self._segments:
            if seg.fd >= 0:
                os.close(seg.fd)
        self.__init__(  # type: ignore[misc]
            self.directory,
            resource=resource,
            instance=instance,
            max_bytes=self.max_bytes,
            segment_bytes=self.segment_bytes,
            fsync_each=self.fsync_each,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for seg in list(self._segments):
                seg.sealed = True
                if seg.count == 0:
                    self._release_if_done(seg)
                else:
                    os.fsync(seg.fd)
                    os.close(seg.fd)
                    seg.fd = -1
            self._segments.clear()
            self._active = None


def _frame(payload: bytes, ns: int) -> bytes:
    stamp = _OFFSET.pack(ns)
    return _FRAME.pack(len(payload), zlib.crc32(payload, zlib.crc32(stamp)), ns) + payload


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _age(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()


def _discard(seg: _Segment) -> None:
    if seg.path is not None:
        seg.path.unlink(missing_ok=True)
    os.close(seg.fd)


#: A ``.new`` file younger than this may belong to a live process between its ``open`` and
#: its ``flock`` (an unlocked instant no lock can close), so it is left for a later start.
UNFINISHED_GRACE_SECONDS = 60.0


def _remove_unfinished(directory: Path, instance: str) -> None:
    """Delete ``.new`` files of processes that died while creating a segment (no records yet)."""
    for path in directory.glob("*.new"):
        if path.name.startswith(f"{instance}-"):
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < UNFINISHED_GRACE_SECONDS:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)


def _adopt(path: Path) -> _Segment | None:
    """Lock and read a segment nobody holds; None when it is held or gone."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if os.fstat(fd).st_nlink == 0:  # delivered and deleted by its owner meanwhile
            raise BlockingIOError
    except BlockingIOError:
        os.close(fd)
        return None
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    frames = _frames(data)
    if data[:8] != _MAGIC or not frames:
        _log.error("audit buffer file %s is not a buffer segment or is damaged at its start; kept as %s.damaged", path, path)
        path.rename(path.with_suffix(".damaged"))
        os.close(fd)
        return None
    (acked,) = _OFFSET.unpack_from(data, 8)
    boundaries = [start for start, _end in frames[1:]]
    valid_end = frames[-1][1]
    if acked != valid_end and acked not in boundaries:
        # Not where an intact record ends: resend rather than skip (the collector drops duplicates).
        acked = boundaries[0] if boundaries else valid_end
    if valid_end < len(data):
        _log.error(
            "audit buffer file %s: %d bytes after offset %d are damaged (a write torn by a crash) and cannot be sent",
            path,
            len(data) - valid_end,
            valid_end,
        )
    count = sum(1 for start in boundaries if start >= acked)
    resource = data[frames[0][0] + _FRAME.size : frames[0][1]]
    return _Segment(path, fd, resource, valid_end, acked, count, sealed=True, adopted=True)


def _frames(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each intact frame after the header, up to the first damaged one."""
    out = []
    pos = _HEADER
    while pos + _FRAME.size <= len(data):
        length, crc, ns = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data):
            break
        payload = data[pos + _FRAME.size : end]
        if zlib.crc32(payload, zlib.crc32(_OFFSET.pack(ns))) != crc:
            break
        out.append((pos, end))
        pos = end
    return out
