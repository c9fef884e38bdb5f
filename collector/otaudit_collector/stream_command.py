"""``otaudit stream``: a tenant's streams, through the API (``--url`` and an admin token in
``OTAUDIT_TOKEN``), like ``otaudit export --url``.

``create`` prints the webhook's secret once, on a line of its own: the API never shows it again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from otaudit_collector.export_command import ApiError, api_call

__all__ = ["add_stream_parser", "stream_command", "start_from_text"]

_FILTERS = ("category", "event", "actor", "target-type", "target-id", "outcome")


def add_stream_parser(commands: Any) -> None:
    """The ``stream`` command and its actions, on the ``otaudit`` parser's subcommands."""
    stream = commands.add_parser(
        "stream", help="a tenant's streams: its trail delivered, as it grows, to a webhook (through the API)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_text: str, *, with_id: bool = True) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = stream.add_parser(name, help=help_text)
        p.add_argument("--url", required=True, help="the collector's API, e.g. http://otaudit:4319 (token from OTAUDIT_TOKEN)")
        if with_id:
            p.add_argument("id", metavar="ID", help="the stream's id, as 'stream list' shows it")
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return p

    create = action("create", "make a webhook stream; prints its secret once", with_id=False)
    create.add_argument("--name", required=True, help="unique in the tenant")
    create.add_argument("--webhook", required=True, metavar="URL", help="the receiver's URL (https:// or http://)")
    for name in _FILTERS:
        create.add_argument(f"--{name}", action="append", metavar="VALUE", help="filter; repeatable")
    create.add_argument("-q", action="append", metavar="PHRASE", help="a search phrase, as the API's q")
    create.add_argument(
        "--start", default="now", help="now (default), seq:N (that event on), or a time (RFC 3339 or Unix seconds): a backfill"
    )
    create.add_argument(
        "--format", choices=("otaudit", "ocsf"), default="otaudit", help="each record: otaudit's event document, or an OCSF event"
    )
    action("list", "the tenant's streams and their health", with_id=False)
    action("show", "one stream's health: state, cursor, lag, counts, last success and last error")
    action("pause", "pause a stream; its cursor stays")
    action("resume", "resume a paused stream from its cursor")
    action("delete", "delete a stream")


def start_from_text(text: str) -> Any:
    """``now``, ``seq:N`` or a time, as the API's ``start``."""
    if text == "now":
        return "now"
    if text.startswith("seq:"):
        try:
            return {"seq": int(text[4:])}
        except ValueError:
            raise ValueError(f"--start {text}: seq:N takes a whole number") from None
    return {"time": text}


def _line(stream: Mapping[str, Any]) -> str:
    health = "ok" if not stream["attempts"] else f"RETRYING ({stream['attempts']} failed): {stream['last_error']}"
    lag = f"lag {stream['lag_events']} events / {stream['lag_seconds']} s" if stream.get("lag_events") is not None else ""
    destination = stream["destination"]
    where = destination.get("url") or destination.get("endpoint") or destination.get("folder", "")
    if stream["kind"] == "syslog":
        where = f"{destination.get('host')}:{destination.get('port')}{' (TLS)' if destination.get('tls') else ''}"
    declared = " (declared)" if stream["declared"] else ""
    kind = stream["kind"] if stream.get("format", "otaudit") == "otaudit" else f"{stream['kind']}/{stream['format']}"
    return (
        f"{stream['id']}  {stream['name']}{declared}  {kind} {where}  {stream['state']}  cursor {stream['cursor']}"
        f"  {lag}  delivered {stream['delivered']}  {health}"
    )


def _show(stream: Mapping[str, Any]) -> str:
    keys = [
        "id",
        "name",
        "kind",
        "format",
        "state",
        "declared",
        "destination",
        "filter",
        "cursor",
        "lag_events",
        "lag_seconds",
        "delivered",
        "failed",
        "attempts",
        "last_success_at",
        "last_error",
        "last_error_at",
        "next_attempt_at",
        "created_at",
        "created_by",
        "updated_at",
        "updated_by",
    ]
    return "\n".join(f"{key:16} {json.dumps(stream[key]) if isinstance(stream[key], dict) else stream[key]}" for key in keys)


def stream_command(args: argparse.Namespace, out: Callable[[str], None] = print) -> int:
    token = os.environ.get("OTAUDIT_TOKEN", "")
    if not token:
        print("otaudit: set OTAUDIT_TOKEN to an admin token of the tenant", file=sys.stderr)
        return 2
    base = args.url.rstrip("/") + "/v1/streams"
    try:
        if args.action == "create":
            filters = {name.replace("-", "_"): values for name in _FILTERS if (values := getattr(args, name.replace("-", "_")))}
            if args.q:
                filters["q"] = args.q
            body = {
                "name": args.name,
                "url": args.webhook,
                "filter": filters,
                "start": start_from_text(args.start),
                "format": args.format,
            }
            made = api_call("POST", base, token, body)
            if args.json:
                out(json.dumps(made))
                return 0
            out(
                f"made stream {made['id']} ({made['name']}), delivering after seq {made['cursor']} to {made['destination']['url']}"
            )
            out("its signing secret, shown once (the receiver verifies each delivery's Otaudit-Signature with it):")
            out(made["secret"])
            return 0
        if args.action == "list":
            listed = api_call("GET", base, token)
            for stream in listed["streams"]:
                out(json.dumps(stream) if args.json else _line(stream))
            if not listed["streams"] and not args.json:
                out("no streams; make one with: otaudit stream create --url URL --name NAME --webhook RECEIVER")
            return 0
        path = f"{base}/{urllib.parse.quote(args.id, safe='')}"
        if args.action == "show":
            shown = api_call("GET", path, token)
            out(json.dumps(shown) if args.json else _show(shown))
            return 0
        if args.action == "delete":
            api_call("DELETE", path, token)
            out(json.dumps({"id": args.id, "deleted": True}) if args.json else f"deleted stream {args.id}")
            return 0
        changed = api_call("POST", f"{path}/{args.action}", token)
        out(json.dumps(changed) if args.json else f"stream {changed['id']} is {changed['state']}, cursor {changed['cursor']}")
        return 0
    except (ApiError, ValueError) as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 1
