"""Go's transparency-log code as an independent checker of otaudit's formats.

``tests/interop/tlogcheck/main.go`` is a small program built on Go's
``golang.org/x/mod/sumdb/note`` (C2SP signed notes) and ``golang.org/x/mod/sumdb/tlog``
(RFC 6962 proofs, tiles), which otaudit did not write. Debian packages both as
``golang-golang-x-mod-dev``; ``bash tests/setup`` installs it with ``golang-go``.

The program is built once per machine and source version, in GOPATH mode against
Debian's sources (no module download), into a per-user folder of the temp directory.
:func:`run_checks` sends it a list of checks and returns one result per check: a dict
with ``ok``, ``error`` and the outputs its kind documents in ``main.go``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["GoToolchainMissing", "run_checks", "tlogcheck_binary"]

SOURCE = Path(__file__).resolve().parent / "interop" / "tlogcheck" / "main.go"
GOPATH = Path("/usr/share/gocode")
"""Where Debian's golang-*-dev packages put Go sources, laid out as a GOPATH."""
XMOD_SUMDB = GOPATH / "src" / "golang.org" / "x" / "mod" / "sumdb"
_PACKAGES = ("note", "tlog")
_SETUP_HINT = "run `bash tests/setup` (it installs Debian's golang-go and golang-golang-x-mod-dev)"


class GoToolchainMissing(RuntimeError):
    """``go`` or the golang.org/x/mod sources are not installed."""


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise GoToolchainMissing(f"the Go toolchain (`go`) is not on PATH: {_SETUP_HINT}")
    for package in _PACKAGES:
        if not (XMOD_SUMDB / package).is_dir():
            raise GoToolchainMissing(f"{XMOD_SUMDB / package} is missing: {_SETUP_HINT}")
    return go


def _go_env(cache: Path) -> dict[str, str]:
    """The environment for ``go build``: GOPATH mode over Debian's sources, and none of the caller's GO* settings.

    GO111MODULE=off makes ``go`` resolve imports in GOPATH/src, so nothing is downloaded;
    GOFLAGS must then be empty (``-mod=...`` is an error outside module mode) and GOENV=off
    ignores any ``go env -w`` file. CGO_ENABLED=0: the program needs no C compiler.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("GO") and name != "CGO_ENABLED"}
    env.update(
        GO111MODULE="off",
        GOPATH=str(GOPATH),
        GOCACHE=str(cache / "gocache"),
        GOFLAGS="",
        GOENV="off",
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
    )
    return env


def _build_key(go: str, env: dict[str, str]) -> str:
    """Hash of what the binary is built from: the program, the Go version and the x/mod sources."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    version = subprocess.run([go, "version"], env=env, capture_output=True, text=True, check=True, timeout=60)
    digest.update(version.stdout.encode())
    for package in _PACKAGES:
        for source in sorted((XMOD_SUMDB / package).glob("*.go")):
            if not source.name.endswith("_test.go"):
                digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir() -> Path:
    """A folder of the temp directory only this user can write, kept across test sessions."""
    folder = Path(tempfile.gettempdir()) / f"otaudit-tlogcheck-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise RuntimeError(f"{folder} is not a folder that only this user can write; remove it and run again")
    return folder


@functools.cache
def tlogcheck_binary() -> Path:
    """The built ``tlogcheck`` program, built on first use (a few seconds) and then reused."""
    go = _go()
    cache = _cache_dir()
    env = _go_env(cache)
    binary = cache / f"tlogcheck-{_build_key(go, env)}"
    if binary.is_file():
        return binary
    # Build beside the final name and rename, so that concurrent sessions never run a half-written file.
    partial = cache / f"{binary.name}.{os.getpid()}.tmp"
    build = subprocess.run(
        [go, "build", "-o", str(partial), str(SOURCE)],
        env=env,
        cwd=SOURCE.parent,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if build.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"building {SOURCE} failed ({_SETUP_HINT} if golang.org/x/mod is missing):\n{build.stderr}")
    partial.replace(binary)
    return binary


def run_checks(checks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run ``checks`` in one ``tlogcheck`` process; one result per check, in order."""
    run = subprocess.run(
        [str(tlogcheck_binary())],
        input=json.dumps({"checks": checks}),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if run.returncode != 0:
        raise RuntimeError(f"tlogcheck exited with status {run.returncode}: {run.stderr.strip()}")
    results: list[dict[str, Any]] = json.loads(run.stdout)["results"]
    if len(results) != len(checks):
        raise RuntimeError(f"tlogcheck answered {len(results)} results for {len(checks)} checks")
    return results
