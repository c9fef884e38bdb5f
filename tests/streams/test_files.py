"""The file transport on a real folder: rotation by size and age, final names with the seq
ranges, content read back with ``gzip``, a torn last batch dropped after a crash (a killed
writer, a file cut in its last member), an existing final file never replaced, and the
disk's refusals reported with the path."""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import otaudit_collector
from otaudit_collector.streams.files import FileTransport, final_name, gzip_member, open_name, read_members
from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record

T0 = 1_767_225_600.0
OPEN = ".acme-s1.open.ndjson.gz"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def record(seq: int) -> Record:
    # Varied text, so that gzip cannot shrink a batch to nothing and sizes grow with the count.
    return Record(seq, f"e-{seq}", f'{{"seq":{seq},"id":"e-{seq}","actor":"u-{seq * 7919 % 1000}","note":"{seq**3:x}é"}}')


def batch(first: int, count: int) -> Batch:
    return Batch("acme", "s1", [record(seq) for seq in range(first, first + count)])


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as stream:
        return stream.read().splitlines()


def texts(first: int, last: int) -> list[str]:
    return [record(seq).text for seq in range(first, last + 1)]


def finished(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if not path.name.startswith("."))


def members_of(path: Path) -> tuple[int, int | None, int | None, int]:
    with path.open("rb") as stream:
        found = read_members(stream)
    return found.count, found.first_seq, found.last_seq, found.end


ROTATE = 400


async def test_rotation_by_size_names_each_file_by_its_range(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_bytes=ROTATE, clock=Clock())
    seq = 1
    for count in (10, 10, 10, 10, 10, 10, 10, 10, 10, 7):
        await transport.send(batch(seq, count))
        seq += count
    await transport.close()
    files = finished(tmp_path)
    assert len(files) >= 3
    everything: list[str] = []
    previous_last = 0
    for path in files:
        tenant, stream, first, last = path.name.removesuffix(".ndjson.gz").split("-")
        assert (tenant, stream, len(first), len(last)) == ("acme", "s1", 12, 12)
        assert int(first) == previous_last + 1
        previous_last = int(last)
        assert lines(path) == texts(int(first), int(last))
        count, low, high, end = members_of(path)
        assert (low, high, end) == (int(first), int(last), path.stat().st_size)
        assert count == (int(last) - int(first) + 1 + 9) // 10
        assert path.stat().st_size >= ROTATE  # finished once it reached the size, not before
        everything += lines(path)
    leftover = tmp_path / OPEN
    if leftover.exists():  # the last file was not due at close: it stays open, a valid gzip file
        assert lines(leftover) == texts(previous_last + 1, 97)
        everything += lines(leftover)
    assert everything == texts(1, 97)


async def test_rotation_by_age_with_the_clock(tmp_path: Path) -> None:
    clock = Clock()
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_seconds=60, clock=clock)
    await transport.send(batch(1, 5))
    clock.now += 30
    await transport.send(batch(6, 5))
    assert finished(tmp_path) == []
    assert lines(tmp_path / OPEN) == texts(1, 10)
    clock.now += 31  # the open file is 61 seconds old: finished before this batch is written
    await transport.send(batch(11, 2))
    assert [path.name for path in finished(tmp_path)] == ["acme-s1-000000000001-000000000010.ndjson.gz"]
    assert lines(tmp_path / OPEN) == texts(11, 12)
    clock.now += 59
    await transport.close()  # not due: left open for the next transport
    assert lines(tmp_path / OPEN) == texts(11, 12)
    assert len(finished(tmp_path)) == 1

    later = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_seconds=60, clock=clock)
    await later.send(batch(13, 1))  # finishes what the previous one left, then writes
    assert [path.name for path in finished(tmp_path)] == [
        "acme-s1-000000000001-000000000010.ndjson.gz",
        "acme-s1-000000000011-000000000012.ndjson.gz",
    ]
    assert lines(tmp_path / OPEN) == texts(13, 13)
    clock.now += 60
    await later.close()  # due now: finished
    assert not (tmp_path / OPEN).exists()
    assert [lines(path) for path in finished(tmp_path)] == [texts(1, 10), texts(11, 12), texts(13, 13)]


async def test_a_file_cut_in_its_last_member_is_finished_without_it(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1", clock=Clock())
    for first in (1, 4, 7, 10):
        await transport.send(batch(first, 3))
    await transport.close()
    open_file = tmp_path / OPEN
    size = open_file.stat().st_size
    last_member = len(
        gzip_member("".join(r.text + "\n" for r in batch(10, 3).records).encode(), first_seq=10, last_seq=12, mtime=int(T0))
    )
    with open_file.open("r+b") as stream:  # a crash in the middle of writing the fourth batch
        stream.truncate(size - last_member // 2)
    with pytest.raises(EOFError):
        lines(open_file)

    caplog.set_level(logging.WARNING)
    after = FileTransport(tmp_path, tenant="acme", stream_id="s1", clock=Clock())
    await after.send(batch(10, 3))  # the runner sends the unacknowledged batch again
    await after.close()
    kept = tmp_path / final_name("acme", "s1", 1, 9)
    assert finished(tmp_path) == [kept]
    assert lines(kept) == texts(1, 9)
    assert members_of(kept) == (3, 1, 9, size - last_member)
    assert lines(open_file) == texts(10, 12)
    assert f"{open_file} ended in a torn batch" in caplog.text
    assert "3 complete batches kept" in caplog.text


async def test_zeros_after_the_last_member_are_dropped_and_an_empty_file_removed(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1", clock=Clock())
    await transport.send(batch(1, 4))
    await transport.close()
    open_file = tmp_path / OPEN
    with open_file.open("ab") as stream:  # what a crash can leave: the size grown, the data not written
        stream.write(b"\x00" * 4096)
    after = FileTransport(tmp_path, tenant="acme", stream_id="s1", clock=Clock())
    await after.send(batch(5, 1))
    await after.close()
    assert [lines(path) for path in finished(tmp_path)] == [texts(1, 4)]

    open_file.write_bytes(b"\x1f\x8b\x08\x10")  # torn inside the first member's header: nothing was acknowledged
    third = FileTransport(tmp_path, tenant="acme", stream_id="s1", clock=Clock())
    await third.send(batch(6, 1))
    await third.close()
    assert [lines(path) for path in finished(tmp_path)] == [texts(1, 4)]
    assert lines(open_file) == texts(6, 6)


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from otaudit_collector.streams.files import FileTransport
    from otaudit_collector.streams.transport import Batch, Record

    async def main() -> None:
        transport = FileTransport(Path(sys.argv[1]), tenant="acme", stream_id="s1", rotate_bytes=1 << 40)
        seq = 1
        while True:
            records = [Record(n, f"e-{n}", '{"seq":%d,"pad":"%s"}' % (n, format(n * 2654435761 % 2**32, "x") * 8)) for n in range(seq, seq + 500)]
            await transport.send(Batch("acme", "s1", records))
            seq += 500
            print(seq - 1, flush=True)

    asyncio.run(main())
    """
)


def test_a_killed_writer_leaves_every_acknowledged_batch(tmp_path: Path) -> None:
    package_root = Path(otaudit_collector.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    assert writer.stdout is not None
    acknowledged = 0
    try:
        while acknowledged < 20_000:  # 40 batches acknowledged, then killed wherever it is
            line = writer.stdout.readline()
            assert line, "the writer stopped"
            acknowledged = int(line)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()

    after = FileTransport(tmp_path, tenant="acme", stream_id="s1")
    asyncio.run(after.send(Batch("acme", "s1", [Record(10**9, "e-last", '{"seq":1000000000}')])))
    asyncio.run(after.close())
    [kept] = finished(tmp_path)
    first, last = (int(part) for part in kept.name.removesuffix(".ndjson.gz").split("-")[2:])
    assert first == 1
    assert last >= acknowledged
    assert last % 500 == 0  # whole batches only
    got = lines(kept)
    assert [int(text.split(",")[0].removeprefix('{"seq":')) for text in got] == list(range(1, last + 1))
    assert members_of(kept)[:3] == (last // 500, 1, last)


async def test_an_existing_final_file_is_never_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    squatter = tmp_path / final_name("acme", "s1", 1, 3)
    squatter.write_bytes(b"someone else's file")
    caplog.set_level(logging.WARNING)
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_bytes=1, clock=Clock())
    await transport.send(batch(1, 3))  # on disk, acknowledged; finishing it after the write fails and is logged
    assert f"cannot finish {tmp_path / OPEN} as {squatter}: a file of that name exists with other records" in caplog.text
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(4, 1))  # the file is due: it must be finished before anything more is written
    assert caught.value.message.startswith(f"cannot finish {tmp_path / OPEN} as {squatter}: a file of that name exists")
    assert f"move {squatter} away" in caught.value.message
    assert squatter.read_bytes() == b"someone else's file"
    assert lines(tmp_path / OPEN) == texts(1, 3)

    squatter.rename(tmp_path / "moved-away")  # what the operator does
    await transport.send(batch(4, 1))
    await transport.close()
    assert [path.name for path in finished(tmp_path)] == [
        final_name("acme", "s1", 1, 3),
        final_name("acme", "s1", 4, 4),
        "moved-away",
    ]
    assert lines(tmp_path / final_name("acme", "s1", 1, 3)) == texts(1, 3)
    assert (tmp_path / "moved-away").read_bytes() == b"someone else's file"


async def test_a_repeat_of_a_finished_file_is_dropped_not_renamed(tmp_path: Path) -> None:
    """After a crash between finishing a file and moving the cursor, the same batch comes again."""
    first = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_bytes=1, clock=Clock())
    await first.send(batch(1, 3))
    await first.close()
    [done] = finished(tmp_path)
    inode, content = done.stat().st_ino, done.read_bytes()
    again = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_bytes=1, clock=Clock())
    await again.send(Batch("acme", "s1", [record(1), record(2)]))  # same records, split otherwise
    await again.send(Batch("acme", "s1", [record(3)]))
    # Each send finished its own file: 1-2, then 3-3; none of them replaced 1-3.
    await again.close()
    assert [path.name for path in finished(tmp_path)] == [
        final_name("acme", "s1", 1, 2),
        final_name("acme", "s1", 1, 3),
        final_name("acme", "s1", 3, 3),
    ]
    assert (done.stat().st_ino, done.read_bytes()) == (inode, content)

    repeat = FileTransport(tmp_path, tenant="acme", stream_id="s1", rotate_bytes=1, clock=Clock())
    await repeat.send(batch(1, 3))  # the very same range and records: the finished file stays, the repeat goes
    await repeat.close()
    assert (done.stat().st_ino, done.read_bytes()) == (inode, content)
    assert len(finished(tmp_path)) == 3
    assert not (tmp_path / OPEN).exists()


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder under /tmp that another user can reach (pytest's tmp_path is private to us)."""
    folder = Path(tempfile.mkdtemp(prefix="otaudit-streams-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for path in folder.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


READ_ONLY_PROBE = textwrap.dedent(
    """
    import asyncio, concurrent.futures.thread, os, sys
    from pathlib import Path
    from otaudit_collector.streams.files import FileTransport
    from otaudit_collector.streams.transport import Batch, DeliveryFailed, Record

    if os.geteuid() == 0:  # root writes anywhere: become nobody, once everything is loaded
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    transport = FileTransport(Path(sys.argv[1]), tenant="acme", stream_id="s1")
    try:
        asyncio.run(transport.send(Batch("acme", "s1", [Record(1, "e-1", "{}")])))
    except DeliveryFailed as failure:
        print(failure.message)
    else:
        print("written")
    """
)


def test_a_read_only_folder_fails_naming_the_path(shared_folder: Path) -> None:
    folder = shared_folder / "archive"
    folder.mkdir()
    folder.chmod(0o555)
    package_root = Path(otaudit_collector.__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", READ_ONLY_PROBE, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(package_root)},
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message == (
        f"cannot create {folder / OPEN}: Permission denied (EACCES); the collector's user may not write there: "
        "fix the folder's owner or permissions"
    )
    assert list(folder.iterdir()) == []


async def test_a_missing_folder_says_so(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path / "not-mounted", tenant="acme", stream_id="s1")
    with pytest.raises(DeliveryFailed) as caught:
        await transport.send(batch(1, 1))
    assert caught.value.message == (
        f"cannot reach the stream's folder {tmp_path / 'not-mounted'}: No such file or directory (ENOENT); "
        "it does not exist: create the folder (or mount its volume)"
    )
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DeliveryFailed, match="it is not a folder"):
        await FileTransport(tmp_path / "a-file", tenant="acme", stream_id="s1").send(batch(1, 1))


@pytest.mark.parametrize(
    ("tenant", "stream_id"),
    [
        ("org:acme", "s1"),
        ("../etc", "s1"),
        (".acme", "s1"),
        ("", "s1"),
        ("acme", "a/b"),
        ("acme", "s 1"),
        ("acme", "ü"),
        ("a" * 129, "s1"),
    ],
)
def test_ids_that_cannot_name_a_file_are_refused(tmp_path: Path, tenant: str, stream_id: str) -> None:
    kind = "tenant" if tenant != "acme" else "stream id"
    with pytest.raises(ValueError, match=rf"^{kind} .* cannot name a stream's files: use A-Z a-z 0-9 \. _ - only"):
        FileTransport(tmp_path, tenant=tenant, stream_id=stream_id)


async def test_a_batch_of_another_stream_and_use_after_close_are_refused(tmp_path: Path) -> None:
    transport = FileTransport(tmp_path, tenant="acme", stream_id="s1")
    with pytest.raises(ValueError, match="a batch of acme/s2 handed to the files of acme/s1"):
        await transport.send(Batch("acme", "s2", [record(1)]))
    await transport.send(batch(1, 1))
    await transport.close()
    with pytest.raises(RuntimeError, match="is closed"):
        await transport.send(batch(2, 1))
    assert open_name("acme", "s1") == OPEN
    assert lines(tmp_path / OPEN) == texts(1, 1)


def test_members_name_their_range_in_the_gzip_header(tmp_path: Path) -> None:
    data = b'{"seq":5}\n{"seq":6}\n'
    member = gzip_member(data, first_seq=5, last_seq=6, mtime=int(T0))
    assert gzip.decompress(member) == data
    assert b"otaudit seq=5-6\x00" in member[:40]
    path = tmp_path / "two.gz"
    path.write_bytes(member + gzip_member(b"x\n", first_seq=7, last_seq=7, mtime=0))
    assert lines(path) == ['{"seq":5}', '{"seq":6}', "x"]
    assert members_of(path) == (2, 5, 7, path.stat().st_size)
    path.write_bytes(gzip.compress(b"not ours\n"))
    with path.open("rb") as stream, pytest.raises(ValueError, match="has no 'otaudit seq=' comment"):
        read_members(stream)
