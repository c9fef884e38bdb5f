"""A stream into a folder: gzip'd NDJSON files, rotated by age and size, for archives.

Each batch is appended to the stream's open file as one complete gzip member (RFC 1952 lets a
file hold several; ``gzip``, ``zcat`` and Python's ``gzip`` read them as one stream), then the
file is fsynced: once :meth:`FileTransport.send` returns, its records are on disk in a valid
gzip file, whatever happens to the process next. Each member's header carries the comment
(FCOMMENT) ``otaudit seq=<first>-<last>``: the range of the batch inside it, readable without
decompressing.

The open file is a dot file, ``.<tenant>-<stream id>.open.ndjson.gz``, locked (``flock``) by
its writer. When it is old enough (``rotate_seconds`` since it was made) or large enough
(``rotate_bytes``), checked before and after each send and at ``close()``, it is finished: it
gets its final name ``<tenant>-<stream id>-<first seq>-<last seq>.ndjson.gz`` (12 digits each,
zero-padded) by a hard link and an unlink, never replacing a file of that name, and the folder
is fsynced. A finished file is never written again.

A transport that finds an open file left by an earlier one (a crash, a lease that moved to
another replica) finishes it before writing: it reads the members, drops a torn last member
(a crash while writing it, so never acknowledged) by truncating the file after the last
complete one, and renames it as above.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import gzip
import logging
import os
import re
import stat
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from otaudit_collector.streams.transport import Batch, DeliveryFailed
from otaudit_collector.streams.webhook import ndjson

__all__ = ["FileTransport", "Members", "check_file_id", "final_name", "gzip_member", "open_name", "read_members"]

log = logging.getLogger(__name__)

_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_COMMENT: Final = re.compile(rb"otaudit seq=([0-9]{1,20})-([0-9]{1,20})")
_FTEXT, _FHCRC, _FEXTRA, _FNAME, _FCOMMENT = 1, 2, 4, 8, 16
_CHUNK: Final = 1 << 20
_HEAD: Final = 4096


def check_file_id(kind: str, value: str) -> None:
    """Raises ValueError unless ``value`` (a tenant or a stream id) can be part of a file name:
    ``A-Z a-z 0-9 . _ -``, starting with a letter or a digit, at most 128 characters."""
    if not _ID.fullmatch(value):
        raise ValueError(
            f"{kind} {value!r} cannot name a stream's files: use A-Z a-z 0-9 . _ - only, "
            "starting with a letter or a digit, at most 128 characters"
        )


def open_name(tenant: str, stream_id: str) -> str:
    """The name of the stream's open file: a dot file, not to be mistaken for a finished one."""
    return f".{tenant}-{stream_id}.open.ndjson.gz"


def final_name(tenant: str, stream_id: str, first_seq: int, last_seq: int) -> str:
    """The name of a finished file holding ``first_seq`` to ``last_seq``."""
    return f"{tenant}-{stream_id}-{first_seq:012d}-{last_seq:012d}.ndjson.gz"


def gzip_member(data: bytes, *, first_seq: int, last_seq: int, mtime: int) -> bytes:
    """One complete gzip member (RFC 1952) of ``data``, its header's comment saying the range."""
    comment = b"otaudit seq=%d-%d" % (first_seq, last_seq)
    header = (
        b"\x1f\x8b\x08" + bytes([_FCOMMENT]) + struct.pack("<I", max(0, min(mtime, 0xFFFFFFFF))) + b"\x00\xff" + comment + b"\x00"
    )
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = compressor.compress(data) + compressor.flush()
    return header + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class Members:
    """What :func:`read_members` found: the complete members' count and seq range (None when
    there is none), and ``end``, the offset after the last complete member. Bytes after it are
    a torn member."""

    count: int
    first_seq: int | None
    last_seq: int | None
    end: int


class ForeignMember(ValueError):
    """A complete gzip member without the ``otaudit seq=`` comment: not written by a stream."""


def _comment(head: bytes) -> bytes | None:
    """The FCOMMENT of a gzip header at the start of ``head``, None when it has none."""
    flags, position = head[3], 10
    if flags & _FEXTRA:
        position += 2 + int.from_bytes(head[position : position + 2], "little")
    if flags & _FNAME:
        position = head.index(b"\x00", position) + 1
    if not flags & _FCOMMENT:
        return None
    return head[position : head.index(b"\x00", position)]


def read_members(stream: BinaryIO) -> Members:
    """Reads the gzip members of ``stream`` from its start, in one pass, and checks each
    (inflated, its CRC and length compared). Stops at the first one that is incomplete or
    damaged: from there on, the bytes are a torn end. Raises :class:`ForeignMember` for a
    sound member without a range."""
    count, first, last, start = 0, None, None, 0
    stream.seek(0)
    carry = stream.read(_CHUNK)
    while carry:
        if len(carry) < _HEAD:
            carry += stream.read(_CHUNK)
        head = carry[:_HEAD]
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk, chunk_at = carry, start
        try:
            while True:
                data = chunk
                while data and not inflater.eof:
                    inflater.decompress(data, _CHUNK)  # the records themselves are not needed
                    data = inflater.unconsumed_tail
                if inflater.eof:
                    break
                chunk_at += len(chunk)
                chunk = stream.read(_CHUNK)
                if not chunk:
                    inflater.flush()
                    break
        except zlib.error:
            break
        if not inflater.eof:
            break
        try:
            comment = _comment(head)
        except (IndexError, ValueError):
            comment = None
        match = _COMMENT.fullmatch(comment or b"")
        if match is None:
            raise ForeignMember(f"the gzip member at byte {start} has no 'otaudit seq=' comment: it was not written by a stream")
        low, high = int(match[1]), int(match[2])
        first = low if first is None else min(first, low)
        last = high if last is None else max(last, high)
        count += 1
        start = chunk_at + len(chunk) - len(inflater.unused_data)
        carry = inflater.unused_data
    return Members(count, first, last, start)


def _same_records(one: Path, other: Path) -> bool:
    """Whether two gzip files inflate to the same bytes (False when either cannot be read)."""
    try:
        with gzip.open(one, "rb") as a, gzip.open(other, "rb") as b:
            while True:
                left, right = a.read(_CHUNK), b.read(_CHUNK)
                if left != right:
                    return False
                if not left:
                    return True
    except (OSError, EOFError, zlib.error):
        return False


_HINTS: Final = {
    errno.ENOSPC: "the disk is full: free space, or point the stream at another folder",
    errno.EDQUOT: "the disk quota is used up: free space, or raise the quota",
    errno.EACCES: "the collector's user may not write there: fix the folder's owner or permissions",
    errno.EPERM: "the collector's user may not do that there: fix the folder's owner or permissions (or its filesystem has no hard links)",
    errno.EROFS: "the filesystem is read-only: remount it read-write, or point the stream at another folder",
    errno.ENOENT: "it does not exist: create the folder (or mount its volume)",
    errno.ENOTDIR: "a part of that path is not a folder",
    errno.EIO: "the disk reported an I/O error: check it",
    errno.EOPNOTSUPP: "the filesystem has no hard links, which finishing a file needs: use another folder",
    errno.EMLINK: "the filesystem refuses another hard link: use another folder",
}


def _problem(action: str, path: Path, error: OSError) -> str:
    code = errno.errorcode.get(error.errno or 0, "")
    reason = f"{error.strerror or error} ({code})" if code else f"{error.strerror or error}"
    hint = _HINTS.get(error.errno or 0)
    return f"cannot {action} {path}: {reason}" + (f"; {hint}" if hint else "")


class FileTransport:
    """Writes one stream's batches into ``folder`` (which must exist). The work runs in a
    thread (fsync waits for the disk); one send at a time."""

    def __init__(
        self,
        folder: Path,
        *,
        tenant: str,
        stream_id: str,
        rotate_seconds: float = 3600,
        rotate_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_file_id("tenant", tenant)
        check_file_id("stream id", stream_id)
        if not rotate_seconds > 0:
            raise ValueError(f"rotate_seconds is more than 0, not {rotate_seconds}")
        if rotate_bytes < 1:
            raise ValueError(f"rotate_bytes is at least 1, not {rotate_bytes}")
        self._folder = Path(folder)
        self._tenant = tenant
        self._stream_id = stream_id
        self._rotate_seconds = rotate_seconds
        self._rotate_bytes = rotate_bytes
        self._clock = clock
        self._open_path = self._folder / open_name(tenant, stream_id)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._first_seq = 0
        self._last_seq = 0
        self._opened_at = 0.0
        self._size = 0
        self._leftover_checked = False
        self._closed = False

    def __repr__(self) -> str:
        return f"FileTransport({str(self._folder)!r}, tenant={self._tenant!r}, stream_id={self._stream_id!r})"

    @property
    def open_path(self) -> Path:
        return self._open_path

    async def send(self, batch: Batch) -> None:
        """Appends the batch to the open file and fsyncs it; DeliveryFailed when the disk does not take it."""
        if batch.tenant != self._tenant or batch.stream_id != self._stream_id:
            raise ValueError(
                f"a batch of {batch.tenant}/{batch.stream_id} handed to the files of {self._tenant}/{self._stream_id}"
            )
        if not batch.records:
            return
        data = ndjson(batch.records)
        await asyncio.to_thread(self._send, batch, data)

    async def close(self) -> None:
        """Finishes the open file if it is due, else leaves it for the next transport (which
        finishes it). Problems are logged, not raised: the records are on disk either way."""
        await asyncio.to_thread(self._close)

    # Everything below runs in a worker thread, under self._lock.

    def _send(self, batch: Batch, data: bytes) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the file transport of stream {self._stream_id} is closed: make a new one")
            if self._fd is None:
                self._check_folder()
            if not self._leftover_checked:
                self._finish_leftover()
                self._leftover_checked = True
            if self._fd is not None and self._due():
                self._finish()
            member = gzip_member(data, first_seq=batch.first_seq, last_seq=batch.last_seq, mtime=int(self._clock()))
            self._append(member, batch.first_seq, batch.last_seq)
            if self._due():
                try:
                    self._finish()
                except DeliveryFailed as failure:
                    # The batch is on disk: it is delivered. The next send tries again, and
                    # fails before writing if the file still cannot be finished.
                    log.warning(
                        "stream %s: %s (the file stays open; tried again at the next batch)", self._stream_id, failure.message
                    )

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._fd is None:
                return
            if self._due():
                try:
                    self._finish()
                except DeliveryFailed as failure:
                    log.warning("stream %s: %s (left open; the next transport finishes it)", self._stream_id, failure.message)
            self._forget()

    def _due(self) -> bool:
        return self._size >= self._rotate_bytes or self._clock() - self._opened_at >= self._rotate_seconds

    def _forget(self) -> None:
        """Closes the open file's descriptor (releasing its lock) and forgets its state."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        self._size = 0

    def _check_folder(self) -> None:
        try:
            is_folder = stat.S_ISDIR(os.stat(self._folder).st_mode)
        except OSError as error:
            raise DeliveryFailed(_problem("reach the stream's folder", self._folder, error)) from None
        if not is_folder:
            raise DeliveryFailed(f"cannot write the stream's files into {self._folder}: it is not a folder")

    def _fsync_folder(self) -> None:
        try:
            fd = os.open(self._folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            raise DeliveryFailed(_problem("fsync the folder", self._folder, error)) from None

    def _lock_fd(self, fd: int) -> bool:
        """Takes ``fd``'s lock and checks that the open file's name still leads to it; False
        (and ``fd`` closed) when another transport holds the lock or the file was moved."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DeliveryFailed(
                f"another process holds {self._open_path} (its lock is taken): the stream's previous "
                "transport is still writing; tried again later"
            ) from None
        try:
            same = os.stat(self._open_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
        return same

    def _append(self, member: bytes, first_seq: int, last_seq: int) -> None:
        """Writes one member at the end of the open file (made if needed) and fsyncs it."""
        created = False
        if self._fd is None:
            try:
                fd = os.open(self._open_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o640)
            except FileExistsError:
                raise DeliveryFailed(
                    f"{self._open_path} appeared while this transport held none: another process writes this "
                    "stream; tried again later"
                ) from None
            except OSError as error:
                raise DeliveryFailed(_problem("create", self._open_path, error)) from None
            if not self._lock_fd(fd):
                raise DeliveryFailed(f"{self._open_path} was moved away just after it was made; tried again later")
            self._fd, self._size, self._opened_at = fd, 0, self._clock()
            self._first_seq, self._last_seq = first_seq, last_seq
            created = True
        fd = self._fd
        try:
            view = memoryview(member)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as error:
            try:
                os.ftruncate(fd, self._size)
                os.fsync(fd)
            except OSError:
                pass  # the next transport's read of the file drops the torn member
            self._forget()
            self._leftover_checked = False  # the next send finishes what is in the file
            raise DeliveryFailed(_problem("write", self._open_path, error)) from None
        self._size += len(member)
        self._first_seq = min(self._first_seq, first_seq)
        self._last_seq = max(self._last_seq, last_seq)
        if created:
            try:
                self._fsync_folder()  # the new file's name is durable too
            except DeliveryFailed:
                self._forget()
                self._leftover_checked = False
                raise

    def _finish(self) -> None:
        """Gives the open file its final name and forgets it."""
        final = self._folder / final_name(self._tenant, self._stream_id, self._first_seq, self._last_seq)
        self._publish(final)
        self._forget()
        self._fsync_folder()

    def _publish(self, final: Path) -> None:
        """Links the open file to ``final`` and unlinks the open name. Never replaces ``final``:
        when it exists with the same records (this file repeats one finished before, as
        at-least-once delivery may after a crash), the open file is dropped instead."""
        try:
            os.link(self._open_path, final)
        except FileExistsError:
            try:
                same_file = os.path.samefile(self._open_path, final)
            except OSError:
                same_file = False
            if not same_file and not _same_records(self._open_path, final):
                raise DeliveryFailed(
                    f"cannot finish {self._open_path} as {final}: a file of that name exists with other records, "
                    f"and it is never replaced. Compare the two; move {final} away (or delete the open file "
                    "if the finished one holds all its records) and the stream goes on"
                ) from None
            log.warning("stream %s: %s repeats %s, which is kept; the repeat is removed", self._stream_id, self._open_path, final)
        except OSError as error:
            raise DeliveryFailed(_problem(f"link {self._open_path} to", final, error)) from None
        try:
            os.unlink(self._open_path)
        except OSError as error:
            raise DeliveryFailed(_problem("unlink", self._open_path, error)) from None

    def _finish_leftover(self) -> None:
        """Finishes an open file an earlier transport left behind, if there is one."""
        for _attempt in range(3):
            try:
                fd = os.open(self._open_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            except OSError as error:
                raise DeliveryFailed(_problem("open", self._open_path, error)) from None
            if self._lock_fd(fd):
                break
        else:
            raise DeliveryFailed(f"{self._open_path} keeps being replaced while this transport reads it; tried again later")
        try:
            try:
                with os.fdopen(os.dup(fd), "rb") as stream:
                    members = read_members(stream)
                    size = os.fstat(fd).st_size
            except ForeignMember as error:
                raise DeliveryFailed(f"cannot finish {self._open_path}: {error}; move it away") from None
            except OSError as error:
                raise DeliveryFailed(_problem("read", self._open_path, error)) from None
            try:
                if members.end < size:
                    os.ftruncate(fd, members.end)
                    os.fsync(fd)
                    log.warning(
                        "stream %s: %s ended in a torn batch (a crash while writing it, never acknowledged): "
                        "%d bytes dropped, %d complete batches kept",
                        self._stream_id,
                        self._open_path,
                        size - members.end,
                        members.count,
                    )
                if members.first_seq is None or members.last_seq is None:
                    os.unlink(self._open_path)
                    self._fsync_folder()
                    return
            except OSError as error:
                raise DeliveryFailed(_problem("truncate", self._open_path, error)) from None
            self._publish(self._folder / final_name(self._tenant, self._stream_id, members.first_seq, members.last_seq))
            self._fsync_folder()
        finally:
            os.close(fd)
