"""The UI's live pages, registry page and service-discovery page, rendered in-process."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sdbridge.config import parse_config
from sdbridge.daemon import Daemon
from sdbridge.discovery.base import DiscoveryContext
from sdbridge.job import Job
from sdbridge.job.store import Origin
from sdbridge.model import TargetGroup
from sdbridge.relabel import RelabelConfig, compile_rules, dropping_rule
from sdbridge.web import ui
from sdbridge.web.app import create_app
from tests.unit.test_web_sd import client_for, make_daemon, snapshot_of, targets

Client = TestClient[web.Request, web.Application]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    daemon: Daemon = make_daemon({"web": targets(30, env="prod"), "pending": None})
    client = await client_for(create_app(daemon))
    yield client
    await client.close()


def live_ids(page: str) -> set[str]:
    return set(re.findall(r'id="([^"]+)" data-live', page))


async def test_pages_mark_their_live_regions_and_the_server_clock(client: Client) -> None:
    index = await (await client.get("/")).text()
    assert {"readiness", "jobs-live"} <= live_ids(index)
    assert re.search(r'<body data-now="\d+\.\d{3}" data-refresh="5">', index)
    job = await (await client.get("/jobs/web")).text()
    assert {"readiness", "job-live", "targets-live"} <= live_ids(job)
    # The filter form stays outside the swapped regions: typing is never interrupted.
    live = job.index('id="targets-live"')
    assert job.index('id="filter"') < live
    pending = await (await client.get("/jobs/pending")).text()
    assert "targets-live" in live_ids(pending)  # the targets appear once the job syncs


def test_relative_times_carry_their_unix_time() -> None:
    assert ui._ago(1000.0, 1042.9) == (
        '<time datetime="1970-01-01 00:16:40 UTC" title="1970-01-01 00:16:40 UTC" '
        'data-ago="1000.000">42s ago</time>'
    )
    assert ">in 30s<" in ui._until(1030.0, 1000.0)
    assert ">expired<" in ui._until(1000.0, 1000.5)
    assert [ui._relative(s) for s in (0, 119, 120, 7199, 7200, 172799, 172800)] == [
        "0s",
        "119s",
        "2m",
        "119m",
        "2h",
        "47h",
        "2d",
    ]


RULES = [
    {"action": "drop", "source_labels": ["env"], "regex": "dev"},
    {"source_labels": ["__meta_team"], "target_label": "team"},
    {"action": "drop", "source_labels": ["idx"], "regex": "7.*"},
    {"action": "labeldrop", "regex": "__meta_.*"},
]
ENVS = ("prod", "dev", "staging")


def relabeled_daemon(n: int) -> Daemon:
    """One job "rl" with relabel rules and ``n`` targets fed through its store."""
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "rl",
                    "exec_sd_configs": [{"command": ["true"]}],
                    "relabel_configs": RULES,
                    "keep_dropped_targets": 0,
                },
                {"name": "plain", "exec_sd_configs": [{"command": ["true"]}]},
            ]
        }
    )
    daemon = Daemon(config)
    job = Job(config.jobs[0], config.global_)
    origin = Origin(0, "exec_sd_configs[0]", DiscoveryContext(job="rl", mechanism="exec"))
    groups = [
        TargetGroup(
            source=f"g{i}",
            targets=({"__address__": f"127.0.{i // 250}.{1 + i % 250}:9100"},),
            labels={
                "env": ENVS[i % 3],
                "idx": str(i),
                "__meta_team": "<b>team</b>" if i == 0 else f"t{i % 5}",
            },
        )
        for i in range(n)
    ]
    job.store.apply(0, job.store.render(origin, groups), full=True)
    ordered, snapshot = job.store.prepare_build()()
    job.store.finish_build(ordered)
    job.publisher.snapshot = snapshot
    daemon.jobs["rl"] = job
    plain = Job(config.jobs[1], config.global_)
    plain.restore(snapshot_of("plain", targets(3, env="prod")))
    daemon.jobs["plain"] = plain
    return daemon


def expected_dropped(n: int) -> tuple[int, int]:
    """(by the env rule, by the idx rule) of ``n`` targets."""
    by_env = sum(1 for i in range(n) if i % 3 == 1)
    by_idx = sum(1 for i in range(n) if i % 3 != 1 and str(i).startswith("7"))
    return by_env, by_idx


@pytest.fixture
async def sd_client() -> AsyncIterator[Client]:
    client = await client_for(create_app(relabeled_daemon(10_000)))
    yield client
    await client.close()


def rows(page: str) -> list[str]:
    body = page[page.index('id="sd-targets"') :]
    return re.findall(r'<tr class="(?:active|dropped)">.*?</tr>', body)


async def test_service_discovery_page_at_10000_targets(sd_client: Client) -> None:
    by_env, by_idx = expected_dropped(10_000)
    page = await (await sd_client.get("/jobs/rl/service-discovery")).text()
    assert f"{10_000 - by_env - by_idx:,} active target(s); {by_env + by_idx:,} dropped" in page
    assert f"Dropped ({by_env + by_idx:,})" in page
    assert len(rows(page)) == 100
    assert "page 1 of 100" in page
    # Target labels after relabeling: __meta_* gone, team copied from it; escaped.
    first = rows(page)[0]
    assert first.count("__meta_team") == 1  # before only
    assert "&lt;b&gt;team&lt;/b&gt;" in first
    assert "<b>team" not in page
    # The rules, and for each dropped target the rule that dropped it.
    assert 'id="rule-0"' in page
    assert 'id="rule-3"' in page
    dropped = await (
        await sd_client.get("/jobs/rl/service-discovery?show=dropped&per_page=1000")
    ).text()
    shown = rows(dropped)
    assert len(shown) == 1000
    assert all('class="dropped"' in r for r in shown)
    for row in shown:
        found = re.search(r'<span class="k">idx</span>=<span class="v">(\d+)<', row)
        assert found is not None
        idx = int(found[1])
        rule = 0 if idx % 3 == 1 else 2
        assert f"relabel_configs[{rule}]" in row, row
    assert "action: &quot;drop&quot;, source_labels: [&quot;env&quot;]" in dropped


async def test_service_discovery_filter_and_show(sd_client: Client) -> None:
    by_idx = expected_dropped(10_000)[1]
    page = await (
        await sd_client.get("/jobs/rl/service-discovery", params={"q": "idx=7", "show": "dropped"})
    ).text()
    # idx=7 matches idx=7, 70, 700, 7000 ...: all dropped, by env or by idx.
    matching = [i for i in range(10_000) if f"idx={i}".startswith("idx=7")]
    assert f"of <strong>{len(matching):,}</strong> dropped target(s)" in page
    assert by_idx < len(matching)
    active = await (
        await sd_client.get("/jobs/rl/service-discovery", params={"q": "team=t1", "show": "active"})
    ).text()
    assert all('team</span>=<span class="v">t1' in r for r in rows(active))
    # Filtering matches labels after relabeling too: "team" exists only after.
    assert 'class="dropped"' not in active
    junk = await sd_client.get("/jobs/rl/service-discovery?show=<x>&page=abc&per_page=-1")
    assert junk.status == 200
    assert (await sd_client.get("/jobs/nope/service-discovery")).status == 404


async def test_service_discovery_without_rules_and_link(sd_client: Client) -> None:
    page = await (await sd_client.get("/jobs/plain/service-discovery")).text()
    assert "has no <code>relabel_configs</code>" in page
    assert len(rows(page)) == 3
    job = await (await sd_client.get("/jobs/rl")).text()
    assert 'href="/jobs/rl/service-discovery"' in job


def test_dropping_rule_is_the_rule_process_stops_at() -> None:
    rules = compile_rules([RelabelConfig.model_validate(r) for r in RULES])
    assert dropping_rule({"__address__": "a:1", "env": "dev"}, rules) == 0
    assert dropping_rule({"__address__": "a:1", "env": "prod", "idx": "71"}, rules) == 2
    assert dropping_rule({"__address__": "a:1", "env": "prod", "idx": "1"}, rules) is None


async def registry_client(tmp_path: Path, n: int) -> tuple[Client, Daemon]:
    config = parse_config(
        {
            "global": {"data_dir": str(tmp_path)},
            "jobs": [{"name": "x", "exec_sd_configs": [{"command": ["true"]}]}],
        }
    )
    daemon = Daemon(config)
    store = await daemon.registry_store.get(tmp_path)

    def labels(i: int) -> dict[str, str]:
        extra = {"api_token": "tok-SECRET", "note": "<script>x</script>"} if i == 0 else {}
        return {"env": ENVS[i % 3], "zone": f"z{i % 4}", **extra}

    # Concurrent puts share the store's write batches.
    await asyncio.gather(
        *(
            store.put(f"svc{i % 7}", f"i{i}", f"127.0.0.{1 + i % 250}:{8000 + i}", labels(i), 60)
            for i in range(n)
        )
    )
    return await client_for(create_app(daemon)), daemon


async def test_registry_page_at_10000_instances(tmp_path: Path) -> None:
    client, daemon = await registry_client(tmp_path, 10_000)
    try:
        page = await (await client.get("/registry")).text()
        assert "of <strong>10,000</strong> instance(s)" in page
        assert "in 7 service(s)" in page
        assert page.count('<td class="expiry">') == 100
        assert len(re.findall(r'data-until="\d+\.\d{3}">(?:in \d+[sm]|expired)<', page)) == 100
        assert "tok-SECRET" not in page
        assert "<script>x" not in page
        assert "registry-live" in live_ids(page)
        # The filter sees the masked labels only: a secret cannot be guessed through it.
        secret = await (await client.get("/registry", params={"q": "tok-SECRET"})).text()
        assert "of <strong>0</strong> instance(s)" in secret
        masked = await (await client.get("/registry", params={"q": "api_token=<secret>"})).text()
        assert "of <strong>1</strong> instance(s)" in masked
        one = await (
            await client.get("/registry", params={"q": "service=svc3 env=dev", "per_page": "1000"})
        ).text()
        expected = sum(1 for i in range(10_000) if i % 7 == 3 and i % 3 == 1)
        assert f"of <strong>{expected:,}</strong> instance(s)" in one
        # A deregistration removes the row.
        store = daemon.registry_store.current
        assert store is not None
        await store.delete("svc0", "i0")
        page = await (await client.get("/registry")).text()
        assert "of <strong>9,999</strong> instance(s)" in page
    finally:
        await client.close()
        await daemon.registry_store.close()


async def test_registry_page_when_the_store_cannot_open(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    config = parse_config(
        {
            "global": {"data_dir": str(blocker / "data")},
            "jobs": [{"name": "x", "exec_sd_configs": [{"command": ["true"]}]}],
        }
    )
    client = await client_for(create_app(Daemon(config)))
    try:
        response = await client.get("/registry")
        assert response.status == 200
        assert 'id="registry-error"' in await response.text()
    finally:
        await client.close()
