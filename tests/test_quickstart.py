"""The README's front door works as written: its quick start in a fresh virtualenv, and its example."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import venv
from pathlib import Path

import psycopg
import pytest
import requests
from support import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def _block_after(heading: str, language: str) -> str:
    start = README.index(heading)
    match = re.compile(rf"```{language}\n(.*?)```", re.S).search(README, start)
    assert match, f"no {language} block after {heading!r} in README.md"
    return match[1].strip()


def test_ci_runs_the_readme_test_command() -> None:
    command = _block_after("Run the whole test suite", "sh")
    assert command == "bash tests/setup && python -m pytest"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    # .ci/run extracts the command from the README by these two anchors and runs it.
    first = command.split(" && ")[0].replace("/", "\\/")
    assert "/^Run the whole test suite/" in ci and f"/^{first}/" in ci
    # ... and installs nothing of its own: what the suite needs, the README's command installs.
    code = "\n".join(line for line in ci.splitlines() if not line.lstrip().startswith("#"))
    assert "apt-get" not in code and "pip install" not in code and "chromium" not in code
    setup = (REPO / "tests" / "setup").read_text(encoding="utf-8")
    assert "packages+=(chromium)" in setup and "packages+=(golang-go golang-golang-x-mod-dev)" in setup
    assert 'apt-get install -y --no-install-recommends "${packages[@]}"' in setup and "pip install -r requirements-test.txt" in setup


@pytest.mark.slow
def test_readme_quick_start_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    command = _block_after("## Quick start", "sh")
    assert command == "python -m pip install ./verifier ./collector && otaudit serve"
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTAUDIT_", "VIRTUAL_ENV", "PYTHON"))},
        "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(env_dir),
        # Free ports instead of 4317-4319, which another process on a shared machine may hold.
        "OTAUDIT_GRPC_PORT": "0",
        "OTAUDIT_HTTP_PORT": "0",
        "OTAUDIT_API_PORT": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    work = tmp_path / "work"
    work.mkdir()
    # The README runs from the repository root; run the same line there, with data in a temp folder.
    env["OTAUDIT_DATA_DIR"] = str(work / "otaudit-data")
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 600
        grpc_target = http_url = ""
        for line in proc.stdout:
            output.append(line)
            found = re.match(r"\s+OTLP/(gRPC|HTTP)\s+(\S+)", line)
            if found and found[1] == "gRPC":
                grpc_target = found[2]
            elif found:
                http_url = found[2]
            if line.startswith("Send events"):
                break
            assert time.monotonic() < deadline, "quick start did not become ready in time"
        assert grpc_target, "the quick start never printed where it listens:\n" + "".join(output[-40:])
        banner = "".join(output)
        # The printed admin token is for the tenant the README's examples record to.
        assert "No admin token existed: this one is for tenant 'acme'" in banner, banner
        admin_token = next(line.strip() for line in output if line.startswith("otaudit_"))
        api_url = next(re.match(r"\s+API\s+(\S+)", line)[1] for line in output if re.match(r"\s+API\s+", line))  # type: ignore[index]
        threading.Thread(target=lambda: [output.append(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

        example = _block_after("## Sending an audit event from any OpenTelemetry client", "python")
        subprocess.run([sys.executable, "-c", example.replace("127.0.0.1:4317", grpc_target)], check=True, timeout=60)
        # The SDK's example, pointed at this collector the standard way; it delivers at exit.
        sdk_example = _block_after("## Recording events from a service", "python")
        assert len(sdk_example.splitlines()) < 10, "the README promises a first event in under ten lines"
        sdk_env = {**os.environ, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": http_url, "XDG_STATE_HOME": str(tmp_path / "state")}
        subprocess.run([sys.executable, "-c", sdk_example], check=True, timeout=60, env=sdk_env)

        from pgserver import get_server

        server = get_server(work / "otaudit-data" / "postgres", cleanup_mode=None)
        with psycopg.connect(server.get_uri()) as conn:
            stored = conn.execute("SELECT tenant, event, category, doc FROM events ORDER BY seq").fetchall()
        assert len(stored) == 2, "".join(output)
        for row in stored:
            assert row[:3] == ("acme", "updateRole", "accounts_configuration")
            assert row[3]["changes"] == [{"field": "permissions", "old": ["read"], "new": ["read", "export"]}]
        assert stored[1][3]["source"]["service"] == "accounts-api"
        assert stored[1][3]["target"] == {"type": "role", "id": "r-3", "name": "Auditors"}
        # ... and the quick start's token reads back what the examples sent.
        answer = requests.get(
            f"{api_url}/v1/events", params={"event": "updateRole"}, headers={"Authorization": f"Bearer {admin_token}"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
        assert {e["id"] for e in answer.json()["events"]} == {row[3]["id"] for row in stored}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(60)
