"""``otaudit-verify``: verify an otaudit export bundle offline.

Usage::

    otaudit-verify BUNDLE [--key VKEY ...] [--key-file FILE] [--quiet]

Exit status: 0 when the bundle verifies, 1 when it does not (the reason on stderr, as
``otaudit-verify: FAILED: <reason>``), 2 on bad usage or when a file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from otaudit_verify import __version__
from otaudit_verify.bundle import BundleError, verify_bundle
from otaudit_verify.note import NoteError, parse_verifier_key

__all__ = ["main"]

PROG = "otaudit-verify"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Verify an otaudit export bundle offline: the checkpoint's signature, every exported event against its leaf, "
            "and the leaves against the signed root (RFC 6962, C2SP signed-note and tlog-checkpoint)."
        ),
        epilog="Exit status: 0 verified, 1 verification failed, 2 bad usage or unreadable file.",
    )
    parser.add_argument("bundle", metavar="BUNDLE", help="the export bundle (.zip)")
    parser.add_argument(
        "--key",
        metavar="VKEY",
        action="append",
        default=[],
        help="a verifier key of the log (name+hexid+base64), as the log publishes it; repeat for several. "
        "Without --key or --key-file, the bundle's own key.txt is used, which proves only self-consistency.",
    )
    parser.add_argument(
        "--key-file", metavar="FILE", action="append", default=[], help="a file of verifier keys, one per line ('#' comments)"
    )
    parser.add_argument("--quiet", "-q", action="store_true", help="print nothing on success (the exit status says it)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _keys(args: argparse.Namespace) -> list[str]:
    """The trusted keys from --key and --key-file, each checked; ValueError/OSError on a bad one."""
    keys: list[tuple[str, str]] = [(key, "--key") for key in args.key]
    for name in args.key_file:
        with open(name, encoding="utf-8") as file:
            for number, line in enumerate(file, 1):
                text = line.strip()
                if text and not text.startswith("#"):
                    keys.append((text, f"{name} line {number}"))
    for key, where in keys:
        try:
            parse_verifier_key(key)
        except NoteError as exc:
            raise ValueError(f"{where}: {key[:80]!r} is not a verifier key: {exc}") from None
    return [key for key, _ in keys]


class _Progress:
    """A progress line on a terminal, rewritten in place, and cleared at the end."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.width = 0

    def __call__(self, done: int, total: int) -> None:
        text = f"\r{PROG}: {done:,} / {total:,} events checked"
        self.width = max(self.width, len(text))
        self.stream.write(text)
        self.stream.flush()

    def clear(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``otaudit-verify`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on bad usage (2) and on --help/--version (0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        keys = _keys(args)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    progress = None if args.quiet or not sys.stderr.isatty() else _Progress(sys.stderr)
    try:
        try:
            report = verify_bundle(args.bundle, trusted_keys=keys, progress=progress)
        finally:
            if progress is not None:
                progress.clear()
    except BundleError as exc:
        print(f"{PROG}: FAILED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{PROG}: cannot read {args.bundle}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
