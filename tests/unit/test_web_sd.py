"""GET /sd/<job>: Prometheus's http_sd contract, ETags, gzip, shards, odd paths."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import re
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st

from sdbridge import metrics
from sdbridge.config import parse_config
from sdbridge.daemon import Daemon
from sdbridge.job import Job
from sdbridge.model import LabelSet
from sdbridge.relabel import RelabelConfig, compile_rules, process
from sdbridge.render import Snapshot, make_entry, sort_entries
from sdbridge.web import sd
from sdbridge.web.app import create_app
from sdbridge.web.sd import SDCache, accepts_gzip, etag_matches, shard_of, split_shards

# Prometheus discovery/http/http.go accepts exactly this Content-Type.
PROMETHEUS_CONTENT_TYPE = re.compile(r'^(?i:application/json(;\s*charset=("utf-8"|utf-8))?)$')


def targets(n: int, **labels: str) -> list[LabelSet]:
    """``n`` targets on 127.0.0.x with a per-target label."""
    return [
        {"__address__": f"127.0.0.{1 + i % 250}:{9000 + i}", "idx": str(i), **labels}
        for i in range(n)
    ]


def snapshot_of(job: str, labelsets: list[LabelSet]) -> Snapshot:
    """A snapshot as a job would publish it."""
    entries = sort_entries(make_entry(t) for t in labelsets)
    return Snapshot.build(job, entries, groups=len(entries))


def make_daemon(jobs: dict[str, list[LabelSet] | None]) -> Daemon:
    """A daemon whose jobs serve the given targets (None: not synced yet); nothing runs."""
    config = parse_config(
        {"jobs": [{"name": n, "exec_sd_configs": [{"command": ["true"]}]} for n in jobs]}
    )
    daemon = Daemon(config)
    for job_config in config.jobs:
        job = Job(job_config, config.global_)
        labelsets = jobs[job_config.name]
        if labelsets is not None:
            job.restore(snapshot_of(job.name, labelsets))
        daemon.jobs[job.name] = job
    return daemon


async def client_for(app: web.Application) -> TestClient[web.Request, web.Application]:
    # Prometheus's client asks for gzip; the tests say explicitly when they do.
    client = TestClient(TestServer(app), headers={"Accept-Encoding": "identity"})
    await client.start_server()
    return client


@pytest.fixture
def daemon() -> Daemon:
    return make_daemon({"web": targets(50, env="prod"), "empty": [], "pending": None})


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    client = await client_for(create_app(daemon))
    yield client
    await client.close()


async def test_serves_the_snapshot_bytes_as_prometheus_wants(
    client: TestClient[web.Request, web.Application], daemon: Daemon
) -> None:
    response = await client.get("/sd/web", headers={"Accept": "application/json"})
    assert response.status == 200
    assert PROMETHEUS_CONTENT_TYPE.match(response.headers["Content-Type"])
    body = await response.read()
    snapshot = daemon.jobs["web"].snapshot
    assert snapshot is not None
    assert body == snapshot.body
    decoded = orjson.loads(body)
    assert len(decoded) == 50
    assert all(set(group) == {"targets", "labels"} for group in decoded)
    assert response.headers["ETag"] == f'"{snapshot.etag}"'
    assert response.headers["X-Sdbridge-Targets"] == "50"


async def test_empty_job_is_an_empty_list_with_200(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/sd/empty")
    assert response.status == 200
    assert await response.read() == b"[]"


async def test_unsynced_job_is_503_with_a_reason(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/sd/pending")
    assert response.status == 503
    assert "first sync" in await response.text()
    assert response.headers["Retry-After"]


async def test_unknown_job_is_404(client: TestClient[web.Request, web.Application]) -> None:
    response = await client.get("/sd/nope")
    assert response.status == 404


async def test_head_has_headers_and_no_body(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.head("/sd/web")
    assert response.status == 200
    assert response.headers["ETag"]
    assert await response.read() == b""


@pytest.mark.parametrize(
    "header",
    ["{etag}", "W/{etag}", '"other", {etag}', "*", '"x",W/{etag}  ', "{gzetag}"],
)
async def test_if_none_match_gives_304(
    client: TestClient[web.Request, web.Application], daemon: Daemon, header: str
) -> None:
    snapshot = daemon.jobs["web"].snapshot
    assert snapshot is not None
    value = header.format(etag=f'"{snapshot.etag}"', gzetag=f'"{snapshot.etag}-gzip"')
    response = await client.get("/sd/web", headers={"If-None-Match": value})
    assert response.status == 304
    assert await response.read() == b""
    assert response.headers["ETag"] == f'"{snapshot.etag}"'


@pytest.mark.parametrize("header", ['"deadbeef"', "garbage", '""', "W/"])
async def test_if_none_match_other_tag_gives_200(
    client: TestClient[web.Request, web.Application], header: str
) -> None:
    response = await client.get("/sd/web", headers={"If-None-Match": header})
    assert response.status == 200


async def test_new_snapshot_changes_etag(
    client: TestClient[web.Request, web.Application], daemon: Daemon
) -> None:
    first = await client.get("/sd/web")
    old_etag = first.headers["ETag"]
    job = daemon.jobs["web"]
    job.publisher.snapshot = snapshot_of("web", targets(10, env="dev"))
    response = await client.get("/sd/web", headers={"If-None-Match": old_etag})
    assert response.status == 200
    assert response.headers["ETag"] != old_etag
    assert len(orjson.loads(await response.read())) == 10


async def test_gzip_when_asked_and_compressed_once_per_snapshot(
    client: TestClient[web.Request, web.Application],
    daemon: Daemon,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    real = gzip.compress

    def counting(data: bytes, *args: object, **kwargs: object) -> bytes:
        calls.append(len(data))
        return real(data, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(sd.gzip, "compress", counting)
    snapshot = daemon.jobs["web"].snapshot
    assert snapshot is not None
    for _ in range(5):
        response = await client.get(
            "/sd/web", headers={"Accept-Encoding": "gzip, deflate"}, auto_decompress=False
        )
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Vary"] == "Accept-Encoding"
        assert response.headers["ETag"] == f'"{snapshot.etag}-gzip"'
        assert gzip.decompress(await response.read()) == snapshot.body
    assert calls == [len(snapshot.body)]
    plain = await client.get("/sd/web", headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in plain.headers
    assert await plain.read() == snapshot.body


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", True),
        ("GZIP", True),
        ("deflate, gzip;q=0.5", True),
        ("gzip;q=0", False),
        ("gzip; q=0.0", False),
        ("*", True),
        ("*;q=0", False),
        ("gzip;q=0, *", False),
        ("identity", False),
        ("", False),
        ("br", False),
        ("x-gzip", True),
        ("gzip;q=bogus", False),
    ],
)
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_etag_matches_parses_lists() -> None:
    assert etag_matches('W/"a", "b"', ("b",))
    assert etag_matches("*", ("zzz",))
    assert not etag_matches('"ab"', ("a",))
    assert not etag_matches("a", ("a",))  # unquoted is not an entity tag


async def test_shards_partition_the_targets(
    client: TestClient[web.Request, web.Application], daemon: Daemon
) -> None:
    whole = orjson.loads(await (await client.get("/sd/web")).read())
    seen: list[str] = []
    for index in range(3):
        response = await client.get(f"/sd/web?shard={index}&shards=3")
        assert response.status == 200
        shard = orjson.loads(await response.read())
        addresses = [g["targets"][0] for g in shard]
        assert all(shard_of(a, 3) == index for a in addresses)
        assert addresses == sorted(addresses)  # order kept from the snapshot
        seen.extend(addresses)
        again = await client.get(
            f"/sd/web?shard={index}&shards=3", headers={"If-None-Match": response.headers["ETag"]}
        )
        assert again.status == 304
    assert sorted(seen) == sorted(g["targets"][0] for g in whole)


@pytest.mark.parametrize(
    "query",
    [
        "shard=1",
        "shards=2",
        "shard=2&shards=2",
        "shard=-1&shards=2",
        "shard=a&shards=2",
        "shard=0&shards=0",
        "shard=0&shards=100000",
        "shard=0&shards=99999999999999999999",
        "shard=%C2%B2&shards=3",  # a superscript two: a digit to str.isdigit, not to int()
        "shard=%D9%A1&shards=3",  # an Arabic-Indic one
    ],
)
async def test_bad_shard_parameters_are_400(
    client: TestClient[web.Request, web.Application], query: str
) -> None:
    response = await client.get(f"/sd/web?{query}")
    assert response.status == 400


def test_shard_is_prometheus_hashmod() -> None:
    rule = RelabelConfig.model_validate(
        {
            "source_labels": ["__address__"],
            "modulus": 7,
            "target_label": "__tmp_shard",
            "action": "hashmod",
        }
    )
    rules = compile_rules([rule])
    for labels in targets(200):
        relabeled = process(dict(labels), rules)
        assert relabeled is not None
        assert int(relabeled["__tmp_shard"]) == shard_of(labels["__address__"], 7)


@given(
    st.lists(st.integers(min_value=0, max_value=65535), unique=True, max_size=60),
    st.integers(min_value=1, max_value=9),
)
def test_split_shards_is_a_partition(ports: list[int], shards: int) -> None:
    labelsets = [{"__address__": f"127.0.0.1:{p}"} for p in ports]
    snapshot = snapshot_of("j", labelsets)
    parts = split_shards(snapshot, shards)
    assert len(parts) == shards
    assert sum(p.targets for p in parts) == len(ports)
    joined = [g for p in parts for g in orjson.loads(p.body)]
    assert sorted(g["targets"][0] for g in joined) == sorted(t["__address__"] for t in labelsets)
    if shards == 1:
        assert parts[0].body == snapshot.body


async def test_derived_bodies_are_cached_on_snapshot_identity() -> None:
    cache = SDCache()
    first = snapshot_of("j", targets(20))
    entry = cache.get("j", first)
    assert cache.get("j", first) is entry
    assert await entry.gzipped(entry.whole) is await entry.gzipped(entry.whole)
    assert await entry.shard(0, 4) is await entry.shard(0, 4)
    equal_but_new = snapshot_of("j", targets(20))
    assert cache.get("j", equal_but_new) is not entry
    cache.retain(set())
    assert cache.get("j", first) is not entry


@pytest.mark.parametrize(
    "path",
    [
        "/sd/",
        "/sd/web/",
        "/sd/web/extra",
        "/sd/..",
        "/sd/%2e%2e",
        "/sd/..%2F..%2Fetc%2Fpasswd",
        "/sd/web%2F..",
        "/sd/%00",
        "/sd/%ff%fe",
        "/sd/<script>alert(1)</script>",
        "/sd/web%20",
        "/sd/" + "a" * 300,
        "/sd/" + "%41" * 2000,
        "/sd//web",
        "/sd/web;x=1",
    ],
)
async def test_odd_paths_are_refused_safely(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    status, body = await raw_get(client, path)
    assert status in (400, 404), body
    assert b"<script>" not in body
    assert b"passwd" not in body
    assert len(body) < 500
    assert (await client.get("/sd/web")).status == 200  # still serving


@pytest.mark.parametrize(
    "path",
    ["/sd/" + "a" * 20000, "/sd/web?" + "shard=1&" * 3000, "/sd/" + "%2F" * 10000],
)
async def test_oversized_request_line_is_refused_and_server_keeps_serving(
    client: TestClient[web.Request, web.Application], path: str
) -> None:
    status, _ = await raw_get(client, path)
    assert status in (400, 414)
    assert (await client.get("/sd/web")).status == 200


async def raw_get(client: TestClient[web.Request, web.Application], path: str) -> tuple[int, bytes]:
    """Send ``path`` byte for byte (no client-side normalization); return status and body."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        response = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_requests_are_counted_by_job_and_code(
    client: TestClient[web.Request, web.Application],
) -> None:
    ok = metrics.HTTP_SD_REQUESTS.labels(job="web", code="200")
    unknown = metrics.HTTP_SD_REQUESTS.labels(job="", code="404")
    before_ok, before_unknown = ok._value.get(), unknown._value.get()
    await client.get("/sd/web")
    await client.get("/sd/no-such-job")
    assert ok._value.get() == before_ok + 1
    assert unknown._value.get() == before_unknown + 1


@given(st.text(max_size=200), st.text(max_size=200))
def test_header_parsers_never_raise(accept_encoding: str, if_none_match: str) -> None:
    assert isinstance(accepts_gzip(accept_encoding), bool)
    assert isinstance(etag_matches(if_none_match, ("abc",)), bool)


@given(st.dictionaries(st.sampled_from(["shard", "shards", "x"]), st.text(max_size=12)))
def test_shard_parameters_are_a_pair_or_a_reason(query: dict[str, str]) -> None:
    result = sd._shard_params(query)
    if isinstance(result, tuple):
        index, count = result
        assert 0 <= index < count <= sd.MAX_SHARDS
    else:
        assert result is None or isinstance(result, str)
