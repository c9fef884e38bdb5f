"""What the stream tests share: a collector set for quick delivery, tokens, ingest over OTLP/HTTP,
and the API of streams."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
import requests
from support import RunningCollector, good_attributes, record, request, settings_for

from otaudit_collector.config import Settings
from otaudit_collector.storage import access

INVENTORY = "inventory_configuration"  # a category the 'basic' plan does not read


def quick_settings(conninfo: str, extra: Mapping[tuple[str, ...], Any] | None = None) -> Settings:
    """Streams polled often, leases short, backoff capped low: delivery tests end in seconds."""
    return settings_for(
        conninfo,
        {
            ("auth", "token_cache_seconds"): 0,
            ("streams", "poll_seconds"): 0.05,
            ("streams", "lease_seconds"): 2,
            ("streams", "backoff_max_seconds"): 1,
            ("streams", "batch_records"): 10,
            ("integrity", "enabled"): False,
            **(extra or {}),
        },
    )


def token(conninfo: str, tenant: str = "acme", role: str = "admin", pepper: str = "") -> str:
    with psycopg.connect(conninfo) as conn:
        return access.create_token(conn, tenant=tenant, role=role, name=f"{tenant} {role}", pepper=pepper)[1]


def set_plan(conninfo: str, tenant: str, plan: str) -> None:
    with psycopg.connect(conninfo) as conn:
        access.set_plan(conn, tenant, plan)


def ingest(collector: RunningCollector, count: int = 1, *, tenant: str = "acme", category: str | None = None) -> list[str]:
    """Store ``count`` events over OTLP/HTTP; their ids. ``category`` inventory_configuration makes createAssetGroup events."""
    over: dict[str, Any] = {"audit__tenant__id": tenant}
    event = "updateRole"
    if category == INVENTORY:
        over.update(audit__category=INVENTORY, audit__target__type="asset_group")
        event = "createAssetGroup"
    elif category == "site_access":
        over.update(
            audit__category="site_access",
            audit__changes=None,
            audit__target__type=None,
            audit__target__id=None,
            audit__target__name=None,
            audit__details={"method": "sso"},
        )
        event = "siteAccess"
    attributes = [good_attributes(**over) for _ in range(count)]
    answer = requests.post(
        collector.http_url,
        data=request([record(event, a) for a in attributes]).SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.content == b"", answer.content
    return [a["log.record.uid"] for a in attributes]


class Api:
    """The stream routes of one collector, as one token."""

    def __init__(self, collector: RunningCollector, secret: str) -> None:
        self.url = collector.api_url
        self.headers = {"Authorization": f"Bearer {secret}"}

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(method, self.url + path, json=body, headers=self.headers, timeout=30)

    def create(self, **body: Any) -> dict[str, Any]:
        answer = self.call("POST", "/v1/streams", body)
        assert answer.status_code == 201, answer.text
        made: dict[str, Any] = answer.json()
        return made

    def get(self, stream_id: str) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/streams/{stream_id}")
        assert answer.status_code == 200, answer.text
        got: dict[str, Any] = answer.json()
        return got
