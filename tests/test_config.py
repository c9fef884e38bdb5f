"""Configuration: precedence, every problem reported with its path, paths, and ``otaudit serve`` itself."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests
from support import REPO, CollectorProcess, count, otaudit, record, request
from test_ingest_clients import grpc_export

from otaudit_collector.app import catalog_dirs
from otaudit_collector.config import ConfigError, load_settings

CONFIG_DIR = REPO / "config"


def problems_of(
    config_file: Path | None, *, environ: Mapping[str, str], overrides: Mapping[tuple[str, ...], Any] | None = None
) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file, environ=environ, overrides=overrides)
    return list(info.value.problems)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# -- precedence: flag, then environment variable, then file, then default ------------


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    config = write(
        tmp_path / "otaudit.yaml",
        "listen:\n  host: 10.0.0.1\n  grpc_port: 1111\n  http_port: 1112\n  api_port: 1113\n",
    )
    environ = {"OTAUDIT_HTTP_PORT": "2222", "OTAUDIT_API_PORT": "2223", "OTAUDIT_LOG_LEVEL": "debug"}
    overrides = {("listen", "api_port"): 3333, ("listen", "grpc_port"): None}  # None: the flag was not given

    settings = load_settings(config, environ=environ, overrides=overrides)

    assert settings.get("listen", "api_port") == 3333  # flag over environment over file
    assert settings.get("listen", "http_port") == 2222  # environment over file
    assert settings.get("listen", "grpc_port") == 1111  # file over default (an absent flag changes nothing)
    assert settings.get("listen", "host") == "10.0.0.1"  # file over default
    assert settings.get("logging", "level") == "debug"  # environment over default
    assert settings.get("logging", "format") == "json"  # default
    assert settings.get("ingest", "max_batch_records") == 10000  # a section the file does not touch keeps every default

    defaults = load_settings(None, environ={})
    assert defaults.get("listen") == {
        "host": "127.0.0.1",
        "grpc_port": 4317,
        "http_port": 4318,
        "api_host": None,
        "api_port": 4319,
        "header_timeout_seconds": 10,
        "idle_timeout_seconds": 75,
        "workers": 1,
    }
    assert defaults.source == "defaults"


def test_config_file_from_environment_and_flag_wins(tmp_path: Path) -> None:
    from_env = write(tmp_path / "env.yaml", "listen:\n  grpc_port: 5001\n")
    from_flag = write(tmp_path / "flag.yaml", "listen:\n  grpc_port: 5002\n")
    assert load_settings(None, environ={"OTAUDIT_CONFIG": str(from_env)}).get("listen", "grpc_port") == 5001
    assert load_settings(from_flag, environ={"OTAUDIT_CONFIG": str(from_env)}).get("listen", "grpc_port") == 5002
    # An empty variable is as good as unset.
    assert load_settings(None, environ={"OTAUDIT_CONFIG": "", "OTAUDIT_GRPC_PORT": ""}).get("listen", "grpc_port") == 4317


def test_file_replaces_lists_and_plans_but_merges_sections(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yaml",
        "catalogs:\n  packs: [licensing]\n"
        "plans:\n  only:\n    categories: ['*']\n"
        "default_plan: only\n"
        "ingest:\n  clock_skew:\n    max_past_days: 7\n"
        "logging:\n  # every key commented out: an empty section changes nothing\n",
    )
    settings = load_settings(config, environ={})
    assert settings.get("catalogs", "packs") == ["licensing"]
    assert settings.get("catalogs", "bundled") is True
    assert list(settings.get("plans")) == ["only"]
    assert settings.get("ingest", "clock_skew") == {"max_past_days": 7, "max_future_seconds": 300}
    assert settings.get("logging") == {"level": "info", "format": "json", "repeat_window_seconds": 60}


# -- a bad configuration: every problem, each with its path --------------------------

BAD_CONFIG = """\
listen:
  grpc_prot: 4317            # misspelt
  htp_port: 4318             # misspelt
  api_port: "4319"           # a string, not an integer
database:
  url: mysql://db/otaudit    # not PostgreSQL
catalogs:
  dirs: ./catalogs           # not a list
  reload_interval_seconds: -1
storage:                     # no such section
  path: /var/lib/otaudit
ingest:
  max_depth: 100
  clock_skew:
    max_past_days: many
plans:
  Gold Plan:
    retention_days: 30
logging:
  level: verbose
"""

EXPECTED_PROBLEMS = [
    ("listen.grpc_prot", "unknown key"),
    ("listen.htp_port", "unknown key"),
    ("listen.api_port", "is not of type 'integer'"),
    ("database.url", "does not match"),
    ("catalogs.dirs", "is not of type 'array'"),
    ("catalogs.reload_interval_seconds", "less than the minimum of 0"),
    ("storage", "unknown section"),
    ("ingest.max_depth", "greater than the maximum of 64"),
    ("ingest.clock_skew.max_past_days", "is not of type 'integer'"),
    ("plans.Gold Plan", "is not an allowed name"),
    ("plans.Gold Plan", "'categories' is a required property"),
    ("logging.level", "is not one of"),
]


def _problem_for(problems: list[str], path: str, words: str = "") -> str:
    matching = [p for p in problems if p.startswith(f"{path}: ") and words in p]
    assert matching, f"no problem {words!r} reported for {path!r} in:\n" + "\n".join(problems)
    return matching[0]


def test_bad_file_lists_every_problem_with_its_path(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", BAD_CONFIG)
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    problems = info.value.problems
    assert info.value.source == str(config)
    for path, words in EXPECTED_PROBLEMS:
        _problem_for(problems, path, words)
    assert len(problems) == len(EXPECTED_PROBLEMS), "\n".join(problems)
    # The message lists them all, one per line, under the file's name.
    text = str(info.value)
    assert text.startswith(f"invalid configuration ({config}):")
    assert all(f"\n  {p}" in text for p in problems)
    # An unknown key names the keys that would have been right.
    assert "grpc_port" in _problem_for(problems, "listen.grpc_prot")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: [4317, 4318\n", "is not valid YAML at line 2 column 1"),
        ("listen:\n  host: a\n   grpc_port: 1\n", "is not valid YAML at line 3 column"),
        ("- listen\n- database\n", "must be a mapping of sections"),
        ("just a string\n", "must be a mapping of sections"),
        ("listen: 4317\n", "listen: 4317 is not of type 'object'"),
        ("default_plan: platinum\n", "default_plan: 'platinum' is not one of the plans (basic, pro, enterprise)"),
    ],
    ids=["unclosed-list", "bad-indent", "a-list", "a-string", "section-not-mapping", "unknown-default-plan"],
)
def test_unusable_file_is_refused_with_the_reason(tmp_path: Path, text: str, expected: str) -> None:
    config = write(tmp_path / "bad.yaml", text)
    problems = problems_of(config, environ={})
    assert len(problems) == 1
    assert expected in problems[0]


def test_missing_file_is_refused(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nope.yaml", environ={})
    assert problems == ["cannot be read: No such file or directory"]


def test_environment_values_are_checked_and_named() -> None:
    problems = problems_of(None, environ={"OTAUDIT_GRPC_PORT": "abc", "OTAUDIT_API_PORT": "70000", "OTAUDIT_LOG_LEVEL": "loud"})
    assert "OTAUDIT_GRPC_PORT: 'abc' is not an integer" in problems
    assert _problem_for(problems, "listen.api_port").endswith("(set by OTAUDIT_API_PORT)")
    assert _problem_for(problems, "logging.level").endswith("(set by OTAUDIT_LOG_LEVEL)")
    assert len(problems) == 3
    # Surrounding blanks (a trailing newline from a Secret) are not a problem.
    assert load_settings(None, environ={"OTAUDIT_GRPC_PORT": " 4400\n"}).get("listen", "grpc_port") == 4400


def test_flag_values_are_checked_and_named() -> None:
    problems = problems_of(None, environ={}, overrides={("listen", "api_port"): 70000})
    assert problems == ["listen.api_port: 70000 is greater than the maximum of 65535 (set by the command line)"]


# -- files in config/ ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.y*ml")), ids=lambda p: p.name)
def test_config_folder_files_validate(path: Path) -> None:
    settings = load_settings(path, environ={})
    assert settings.source == str(path)
    catalog_dirs(settings)  # the packs they name exist


def test_shared_deployment_example_is_a_shared_deployment() -> None:
    path = CONFIG_DIR / "shared-deployment.example.yaml"
    settings = load_settings(path, environ={})
    assert settings.get("listen", "host") == "0.0.0.0"
    url = settings.get("database", "url")
    assert url.startswith("postgresql://") and ":" not in url.split("://", 1)[1].split("@", 1)[0], "no password in the file"
    assert "OTAUDIT_DATABASE_URL" in path.read_text(encoding="utf-8")
    assert settings.get("catalogs", "dirs")
    assert settings.get("auth", "require_ingest_token") is True, "many services share it: each writes only its tenant"
    assert settings.get("auth", "token_pepper") is None, "the pepper comes from a Secret"
    # The password comes from the environment, which wins over the file.
    secret = "postgresql://otaudit:s3cret@db.internal:5432/otaudit"
    assert load_settings(path, environ={"OTAUDIT_DATABASE_URL": secret}).get("database", "url") == secret


# -- relative paths --------------------------------------------------------------------


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # Any file name works, not only *.yaml.
    config = write(
        tmp_path / "etc" / "otaudit.conf", "database:\n  data_dir: ./data\ncatalogs:\n  dirs: [../my-catalogs, /abs/catalogs]\n"
    )
    settings = load_settings(os.path.relpath(config, elsewhere), environ={})
    assert settings.path("database", "data_dir") == tmp_path / "etc" / "data"
    assert catalog_dirs(settings)[-2:] == [tmp_path / "my-catalogs", Path("/abs/catalogs")]
    assert settings.base_dir == tmp_path / "etc"


def test_relative_paths_not_from_the_file_are_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = write(tmp_path / "etc" / "otaudit.yaml", "listen:\n  grpc_port: 4400\n")
    # The default data_dir (./otaudit-data) is under the working directory, with or without a config file ...
    assert load_settings(None, environ={}).path("database", "data_dir") == tmp_path / "otaudit-data"
    assert load_settings(config, environ={}).path("database", "data_dir") == tmp_path / "otaudit-data"
    # ... and so is a relative OTAUDIT_DATA_DIR or flag value, even when a config file is given.
    assert load_settings(config, environ={"OTAUDIT_DATA_DIR": "var/pg"}).path("database", "data_dir") == tmp_path / "var" / "pg"
    flagged = load_settings(config, environ={}, overrides={("catalogs", "dirs"): ["cats"]})
    assert catalog_dirs(flagged)[-1] == tmp_path / "cats"


# -- otaudit serve, as a process -------------------------------------------------------


@pytest.mark.slow
def test_serve_refuses_a_bad_config_and_does_not_listen(tmp_path: Path) -> None:
    config = write(tmp_path / "bad.yaml", BAD_CONFIG)
    result = otaudit("serve", "--config", str(config), "--http-port", "0", env={"OTAUDIT_GRPC_PORT": "abc"}, cwd=tmp_path)
    assert result.returncode == 2, result
    assert result.stdout == ""  # nothing printed as ready: it never listened
    assert f"invalid configuration ({config})" in result.stderr
    assert "OTAUDIT_GRPC_PORT: 'abc' is not an integer" in result.stderr
    for path, words in EXPECTED_PROBLEMS:
        assert any(line.startswith(f"  {path}: ") and words in line for line in result.stderr.splitlines()), (path, result.stderr)
    assert not (tmp_path / "otaudit-data").exists()  # and started no embedded database


@pytest.mark.slow
def test_serve_on_free_ports_prints_them_and_answers(db: str, tmp_path: Path) -> None:
    proc = CollectorProcess(
        ["serve", "--database-url", db, "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "0"],
        # The API port comes from the environment; the gRPC flag beats its variable.
        env={"OTAUDIT_API_PORT": "0", "OTAUDIT_GRPC_PORT": "4317", "OTAUDIT_CONFIG": ""},
        cwd=tmp_path,
    ).start()
    try:
        assert set(proc.ports) == {"OTLP/gRPC", "OTLP/HTTP", "API"}
        assert all(port > 0 for port in proc.ports.values())
        assert proc.ports["OTLP/gRPC"] != 4317 and proc.ports["API"] != 4319
        assert len(set(proc.ports.values())) == 3
        assert requests.get(f"http://127.0.0.1:{proc.ports['API']}/healthz", timeout=10).json() == {"status": "ok"}
        assert requests.get(f"http://127.0.0.1:{proc.ports['API']}/readyz", timeout=10).status_code == 200
        response = grpc_export(proc.grpc_target, request([record()]))
        assert response.partial_success.rejected_log_records == 0
        assert count(db) == 1
    finally:
        assert proc.terminate() == 0, "".join(proc.output)
    assert not (tmp_path / "otaudit-data").exists()  # an external database: no embedded one


@pytest.mark.slow
def test_a_port_in_use_is_refused_with_a_clear_message(db: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flag in ("--grpc-port", "--http-port"):
            ports = {"--grpc-port": "0", "--http-port": "0", "--api-port": "0", flag: str(port)}
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "otaudit_collector",
                    "serve",
                    "--database-url",
                    db,
                    *[x for kv in ports.items() for x in kv],
                ],
                check=False,
                capture_output=True,
                text=True,
                timeout=120,
                cwd=tmp_path,
            )
            assert result.returncode == 1, result.stderr
            assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
            assert "Traceback" not in result.stderr
