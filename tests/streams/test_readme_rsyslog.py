"""The README's rsyslog configuration for syslog streams, run as written (another port and
folder) by Debian's rsyslogd against a running collector's syslog stream: each tenant's events
land in a file of their own, one JSON record a line, in both formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lognorm import parse_cef
from rsyslogd import Rsyslog, free_port
from stream_helpers import Api, ingest, quick_settings, token
from support import RunningCollector, rows, wait_until

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_config(port: int, folder: Path, fmt: str) -> str:
    blocks = re.findall(r"```rsyslog\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 1, "README.md holds one rsyslog configuration"
    config = blocks[0]
    assert 'port="601"' in config and "/var/log/otaudit/" in config and "[{]" in config
    if fmt == "cef":  # as the README says: the message starts at CEF: instead of {
        config = config.replace("[{]", "CEF:")
    return config.replace('port="601"', f'port="{port}"').replace("/var/log/otaudit/", f"{folder}/")


@pytest.mark.parametrize("fmt", ["otaudit", "ocsf", "cef"])
def test_the_readmes_rsyslog_configuration_files_each_tenants_events(db: str, tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "otaudit"
    folder.mkdir()
    port = free_port()
    server = Rsyslog(tmp_path, port, None, config=_readme_config(port, folder, fmt))
    server.start()
    sender = RunningCollector(quick_settings(db))
    delivered: dict[str, int] = {}  # tenant -> the stream's cursor once it caught up
    try:
        for tenant in ("acme", "globex"):
            api = Api(sender, token(db, tenant=tenant))
            made = api.create(name="siem", kind="syslog", host="127.0.0.1", port=port, format=fmt, start={"seq": 1})
            ingest(sender, 4, tenant=tenant)
            delivered[tenant] = _caught_up(api, made["id"], db, tenant)
    finally:
        sender.stop()
    try:
        for tenant, upto in delivered.items():
            stored = rows(db, "SELECT id, seq FROM events WHERE tenant = %s AND seq <= %s ORDER BY seq", (tenant, upto))
            lines = _lines(folder / f"{tenant}.ndjson", len(stored))
            if fmt == "cef":
                read = parse_cef(lines, tmp_path)
                got = [(c["Extensions"]["externalId"], int(c["Extensions"]["cn1"])) for c in read]
                assert {c["Extensions"]["cs1"] for c in read} == {tenant}
                assert got[: len(stored)] == [(s["id"], s["seq"]) for s in stored] and len(stored) >= 4
                continue
            records = [json.loads(line) for line in lines]
            if fmt == "otaudit":
                got = [(r["id"], r["seq"]) for r in records]
            else:
                got = [(r["metadata"]["uid"], r["metadata"]["sequence"]) for r in records]
                assert {r["metadata"]["tenant_uid"] for r in records} == {tenant}
            assert got[: len(stored)] == [(s["id"], s["seq"]) for s in stored] and len(stored) >= 4
    finally:
        server.stop()


def _caught_up(api: Api, stream_id: str, db: str, tenant: str) -> int:
    """The stream's cursor once it reached the tenant's last event."""

    def head() -> int:
        found = rows(db, "SELECT coalesce(max(seq), 0) AS head FROM events WHERE tenant = %s", (tenant,))
        return int(found[0]["head"])

    wait_until(lambda: api.get(stream_id)["cursor"] >= head(), 60, "the stream to catch up")
    return int(api.get(stream_id)["cursor"])


def _lines(path: Path, at_least: int) -> list[str]:
    """The lines rsyslogd wrote to ``path``, once there are ``at_least``."""
    wait_until(lambda: path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= at_least, 30, "rsyslogd")
    return path.read_text(encoding="utf-8").splitlines()
