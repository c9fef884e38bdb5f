"""The ``otaudit`` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg

from otaudit_collector import __version__
from otaudit_collector._text import plural
from otaudit_collector.config import ConfigError, Settings, load_settings
from otaudit_collector.core.catalog import CatalogError, Problem, lint_catalogs, load_catalogs
from otaudit_collector.core.query import BadFilter
from otaudit_collector.logs import setup_logging
from otaudit_collector.storage.database import NoDatabase
from otaudit_collector.stream_command import add_stream_parser
from otaudit_collector.verify_command import add_verify_parser

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otaudit", description="otaudit: the audit trail collector for OpenTelemetry.")
    parser.add_argument("--version", action="version", version=f"otaudit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", metavar="FILE", help="YAML configuration file (OTAUDIT_CONFIG)")
        p.add_argument("--data-dir", metavar="DIR", help="where the embedded PostgreSQL keeps its files (OTAUDIT_DATA_DIR)")
        p.add_argument(
            "--database-url", metavar="URL", help="PostgreSQL URL; none starts the embedded server (OTAUDIT_DATABASE_URL)"
        )
        return p

    serve = with_config(commands.add_parser("serve", help="run the collector"))
    serve.add_argument("--host", help="address the OTLP receivers bind to (OTAUDIT_HOST)")
    serve.add_argument("--grpc-port", type=int, metavar="PORT", help="OTLP/gRPC port, 0 for any free port (OTAUDIT_GRPC_PORT)")
    serve.add_argument("--http-port", type=int, metavar="PORT", help="OTLP/HTTP port, 0 for any free port (OTAUDIT_HTTP_PORT)")
    serve.add_argument("--api-host", help="address the API binds to (OTAUDIT_API_HOST)")
    serve.add_argument("--api-port", type=int, metavar="PORT", help="API port, 0 for any free port (OTAUDIT_API_PORT)")
    serve.add_argument(
        "--database-read-url",
        metavar="URL",
        help="a streaming replica of the database for the API's event pages (OTAUDIT_DATABASE_READ_URL)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="collector processes sharing the OTLP ports; the first also serves the API (OTAUDIT_WORKERS)",
    )

    with_config(commands.add_parser("migrate", help="apply database migrations"))

    catalog = commands.add_parser("catalog", help="work with event catalogs").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    lint = with_config(catalog.add_parser("lint", help="check catalog folders and report every problem"))
    lint.add_argument("dirs", nargs="*", metavar="DIR", help="catalog folders (default: those the configuration loads)")

    rejects = commands.add_parser("rejects", help="inspect and replay quarantined records").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = with_config(rejects.add_parser("list", help="list quarantined records"))
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    listing.add_argument("--all", action="store_true", help="include records already replayed")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    replay = with_config(rejects.add_parser("replay", help="validate quarantined records again and store those that now pass"))
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="reject ids (default: every open reject)")
    replay.add_argument("--dry-run", action="store_true", help="report what would be stored, store nothing")

    tenant = commands.add_parser("tenant", help="tenants and their plans").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    tenant_set = with_config(tenant.add_parser("set", help="give a tenant a plan"))
    tenant_set.add_argument("tenant", metavar="TENANT")
    tenant_set.add_argument("--plan", required=True, help="one of the configured plans")
    tenant_list = with_config(tenant.add_parser("list", help="list tenants, their plans and event counts"))
    tenant_list.add_argument("--json", action="store_true", help="one JSON object per line")

    token = commands.add_parser("token", help="API and ingest tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = with_config(token.add_parser("create", help="make a token and print it once"))
    create.add_argument("--tenant", required=True, help="the tenant it acts for")
    create.add_argument("--role", required=True, choices=["admin", "auditor", "ingest"], help="what it may do")
    create.add_argument("--name", help="who holds it (the actor of its audited reads)")
    create.add_argument("--json", action="store_true", help="print a JSON object with the token")
    tokens = with_config(token.add_parser("list", help="list tokens (never their secrets)"))
    tokens.add_argument("--tenant", help="only this tenant's")
    tokens.add_argument("--all", action="store_true", help="include revoked tokens")
    tokens.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = with_config(token.add_parser("revoke", help="revoke a token"))
    revoke.add_argument("id", metavar="ID", help="the token's id, as 'token list' shows it")

    export = with_config(
        commands.add_parser(
            "export",
            help="write a tenant's trail to a file, with a progress bar",
            description="Through the API with a token (--url, OTAUDIT_TOKEN): the token's tenant and plan apply."
            " Straight from the database with --tenant (operators): every category; recorded in the tenant's trail."
            " Without -o the file is written in the current folder; the last line names the path written.",
        )
    )
    source = export.add_mutually_exclusive_group(required=True)
    source.add_argument("--url", help="the collector's API, e.g. http://otaudit:4319 (token from OTAUDIT_TOKEN)")
    source.add_argument("--tenant", help="export this tenant straight from the database")
    export.add_argument(
        "--format",
        choices=["csv", "ndjson", "json", "xlsx", "bundle"],
        default="csv",
        help="default csv; bundle: a zip an auditor checks offline with otaudit-verify (events, proofs, signed checkpoint)",
    )
    export.add_argument("--bundle", action="store_const", const="bundle", dest="format", help="the same as --format bundle")
    export.add_argument("--bom", action="store_true", help="start a CSV with a UTF-8 BOM (for spreadsheets)")
    export.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="where to write ('-' for standard output); default otaudit-TENANT-TIME.FORMAT in the current folder",
    )
    for name in ("category", "event", "actor", "target-type", "target-id", "outcome"):
        export.add_argument(f"--{name}", action="append", metavar="VALUE", help="filter; repeatable")
    export.add_argument("--since", help="RFC 3339 time or Unix seconds")
    export.add_argument("--until", help="RFC 3339 time or Unix seconds")
    export.add_argument("-q", action="append", metavar="PHRASE", help="a search phrase, as the API's q")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")

    importing = with_config(
        commands.add_parser(
            "import",
            help="load a tenant's past trail from an NDJSON export or a CSV file, keeping its times",
            description="Straight into the database (operators). Each line is checked against the catalogs, keeps its"
            " occurred_at however old, is flagged 'imported' and numbered after the tenant's events in time order;"
            " ids already stored are skipped. Rejected lines go to FILE.rejects.ndjson with their line numbers.",
        )
    )
    importing.add_argument("file", metavar="FILE", help="an NDJSON export (otaudit export --format ndjson) or a CSV file")
    importing.add_argument("--tenant", required=True, help="the tenant the events belong to")
    importing.add_argument("--retenant", action="store_true", help="import events naming another tenant as --tenant")
    importing.add_argument("--format", choices=["ndjson", "csv"], help="default: from the file's extension")
    importing.add_argument("--map", action="append", metavar="FIELD=COLUMN", help='CSV: a column, or FIELD="VALUE"; repeatable')
    importing.add_argument("--mapping", metavar="FILE", help="CSV: a file of FIELD=COLUMN lines")
    importing.add_argument("--rejects", metavar="FILE", help="where rejected lines go (default FILE.rejects.ndjson)")
    importing.add_argument("--batch-size", type=int, default=5000, metavar="N", help="events per transaction (default 5000)")
    importing.add_argument("--no-progress", action="store_true", help="no progress bar")

    add_verify_parser(commands, with_config)
    add_stream_parser(commands)

    retention = commands.add_parser("retention", help="delete what the tenants' plans no longer keep").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    retention_run = with_config(retention.add_parser("run", help="apply retention once and report what was deleted"))
    retention_run.add_argument("--dry-run", action="store_true", help="report what would be deleted, change nothing")
    retention_run.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    def absolute(value: str | None) -> str | None:
        return str(Path(value).expanduser().resolve()) if value else None

    overrides: dict[tuple[str, ...], Any] = {
        ("database", "data_dir"): absolute(getattr(args, "data_dir", None)),
        ("database", "url"): getattr(args, "database_url", None),
        ("database", "read_url"): getattr(args, "database_read_url", None),
        ("listen", "host"): getattr(args, "host", None),
        ("listen", "grpc_port"): getattr(args, "grpc_port", None),
        ("listen", "http_port"): getattr(args, "http_port", None),
        ("listen", "api_host"): getattr(args, "api_host", None),
        ("listen", "api_port"): getattr(args, "api_port", None),
        ("listen", "workers"): getattr(args, "workers", None),
    }
    return load_settings(getattr(args, "config", None), environ=os.environ, overrides=overrides)


def _quiet_native_logs() -> None:
    """Keep gRPC's C core from writing plain-text lines to stderr, where the logs are promised as JSON lines.

    Set before grpc is first imported (the commands import it lazily). Fork support off: the collector
    forks only to run PostgreSQL's programs (pgserver), which exec at once, and grpc's fork handlers
    otherwise print "skipping fork() handlers" when a collector stops. An operator's own values win.
    """
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_native_logs()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "migrate":
            return _migrate(args)
        if args.command == "catalog":
            return _lint(args)
        if args.command == "rejects":
            from otaudit_collector import rejects

            settings = _settings(args)
            if args.action == "list":
                return rejects.list_command(
                    settings, tenant=args.tenant, limit=args.limit, include_replayed=args.all, as_json=args.json
                )
            return rejects.replay_command(settings, ids=args.ids, dry_run=args.dry_run)
        if args.command in ("tenant", "token"):
            return _admin(args)
        if args.command == "retention":
            return _retention(args)
        if args.command == "export":
            return _export(args)
        if args.command == "import":
            from otaudit_collector.import_command import import_command

            return import_command(args, _settings)
        if args.command == "verify":
            return _verify(args)
        if args.command == "stream":
            from otaudit_collector.stream_command import stream_command

            return stream_command(args)
    except BadFilter as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 2
    except NoDatabase as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 2
    except CatalogError as exc:
        print(f"otaudit: {'refusing to start: ' if args.command == 'serve' else ''}{exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"otaudit: {exc}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(f"otaudit: the database cannot be reached: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    return 2


def _serve(args: argparse.Namespace) -> int:
    from otaudit_collector.admin import bootstrap_admin_token
    from otaudit_collector.app import Collector, catalog_dirs, describe, ensure_partitions, settle_process
    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations
    from otaudit_collector.storage.search_indexes import sync_prefix_indexes

    settings = _settings(args)
    setup_logging(
        settings.get("logging", "level"),
        settings.get("logging", "format"),
        float(settings.get("logging", "repeat_window_seconds")),
    )
    catalogs = load_catalogs(catalog_dirs(settings))
    database = open_database(settings, create=True)  # the one command that makes the embedded database
    if settings.get("database", "read_url"):
        database.description += "; event pages from a streaming replica (database.read_url)"
    try:
        apply_migrations(database.conninfo)
        sync_prefix_indexes(database.conninfo, settings.get("search", "details_prefix_keys"))
        ensure_partitions(database.conninfo, settings.get("ingest", "partitions_ahead_months"))
        bootstrap = bootstrap_admin_token(database.conninfo, settings)

        def announce() -> None:
            if bootstrap is not None:  # stdout, once, never the log
                print(f"No admin token existed: this one is for tenant '{bootstrap[0]}' (shown once; keep it now):")
                print(bootstrap[1])

        if settings.get("listen", "workers") > 1:
            from otaudit_collector.workers import WorkerFailed, supervise

            try:
                supervise(settings, database.conninfo, database.description, catalogs, announce)
            except WorkerFailed as exc:
                print(f"otaudit: {exc}", file=sys.stderr)
                return 1
            return 0

        async def run() -> None:
            collector = Collector(settings, database.conninfo, catalogs)
            try:
                endpoints = await collector.start()
            except BaseException:
                await collector.stop(0)
                raise
            settle_process()
            keys = collector.log_keys if settings.get("integrity", "enabled") else None

            def ready() -> None:
                announce()
                print("\n".join(describe(endpoints, database.description, catalogs, keys)), flush=True)

            await collector.run_until_signalled(float(settings.get("shutdown", "grace_seconds")), ready)

        asyncio.run(run())
    finally:
        database.close()
    return 0


def _admin(args: argparse.Namespace) -> int:
    from otaudit_collector import admin

    settings = _settings(args)
    if args.command == "tenant":
        if args.action == "set":
            return admin.tenant_set_command(settings, args.tenant, args.plan)
        return admin.tenant_list_command(settings, as_json=args.json)
    if args.action == "create":
        return admin.token_create_command(settings, tenant=args.tenant, role=args.role, name=args.name, as_json=args.json)
    if args.action == "list":
        return admin.token_list_command(settings, tenant=args.tenant, include_revoked=args.all, as_json=args.json)
    return admin.token_revoke_command(settings, args.id)


def _export(args: argparse.Namespace) -> int:
    from otaudit_collector.core.export import format_named
    from otaudit_collector.export_command import Progress, export_from_database, export_via_api, filters_from_args

    fmt = format_named(args.format)
    filters = filters_from_args(args)
    progress = Progress(sys.stderr, "events", enabled=not args.no_progress)
    if args.url:
        token = os.environ.get("OTAUDIT_TOKEN", "")
        if not token:
            print("otaudit: set OTAUDIT_TOKEN to an admin token of the tenant to export", file=sys.stderr)
            return 2
        return export_via_api(args.url, token, fmt, args.bom, filters, args.output, progress)
    from otaudit_collector.app import catalog_dirs
    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations
    from otaudit_collector.storage.titles import store_titles

    settings = _settings(args)
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        store_titles(database.conninfo, load_catalogs(catalog_dirs(settings)))  # the CSV's title column
        if fmt.name == "bundle":  # a checkpoint of everything stored so far, for the bundle to end at
            from otaudit_collector.integrity import Witnesses, load_log_keys, make_checkpoints

            integrity = settings.get("integrity")
            witnesses = Witnesses(integrity["witness_dir"], integrity["witness_urls"])
            make_checkpoints(database.conninfo, load_log_keys(settings, database.conninfo), witnesses, [args.tenant])
        return asyncio.run(
            export_from_database(settings, database.conninfo, args.tenant, fmt, args.bom, filters, args.output, progress)
        )
    finally:
        database.close()


def _verify(args: argparse.Namespace) -> int:
    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations
    from otaudit_collector.verify_command import verify_api_command, verify_command

    if args.url:
        return verify_api_command(args)
    settings = _settings(args)
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        return verify_command(args, settings, database.conninfo)
    finally:
        database.close()


def _retention(args: argparse.Namespace) -> int:
    import json

    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations
    from otaudit_collector.storage.retention import run_retention

    settings = _settings(args)
    database = open_database(settings)
    try:
        apply_migrations(database.conninfo)
        report = run_retention(database.conninfo, settings, dry_run=args.dry_run, trigger="command")
    except psycopg.OperationalError:
        raise
    except psycopg.Error as exc:
        print(f"otaudit: retention failed: {str(exc).strip()}", file=sys.stderr)
        return 1
    finally:
        database.close()
    print(json.dumps(report.as_json()) if args.json else "\n".join(report.lines()))
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from otaudit_collector.storage.database import open_database
    from otaudit_collector.storage.migrate import apply_migrations
    from otaudit_collector.storage.search_indexes import sync_prefix_indexes

    settings = _settings(args)
    database = open_database(settings)
    try:
        applied = apply_migrations(database.conninfo)
        indexes = sync_prefix_indexes(database.conninfo, settings.get("search", "details_prefix_keys"), drop=False)
    finally:
        database.close()
    for migration in applied:
        print(f"applied {migration.version:04d}_{migration.name}")
    print("database schema is up to date" if not applied else f"{plural(len(applied), 'migration')} applied")
    for key in indexes.created:
        print(f"built the details prefix index of {key!r} (search.details_prefix_keys)")
    for name in indexes.unnamed:
        print(
            f"kept {name}: its key is not in this configuration's search.details_prefix_keys; a collector started with such a configuration drops it"
        )
    return 0


def _lint(args: argparse.Namespace) -> int:
    from otaudit_collector.app import catalog_dirs

    dirs = [Path(d) for d in args.dirs] if args.dirs else catalog_dirs(_settings(args))
    problems: list[Problem]
    problems, files = lint_catalogs(dirs)
    if problems:
        for problem in problems:
            print(problem)
        print(f"{len(problems)} problem(s) in {len(dirs)} folder(s)", file=sys.stderr)
        return 1
    catalogs = load_catalogs(dirs)
    events = sum(len(c.events) for c in catalogs.categories.values())
    print(
        f"ok: {plural(len(files), 'catalog file')}, {plural(len(catalogs.categories), 'category', 'categories')},"
        f" {plural(events, 'event')}"
    )
    return 0
