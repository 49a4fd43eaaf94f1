"""Load of a refresh on Eureka: delta mode (sdbridge's default) vs a full fetch every time.

One Eureka double (tests/doubles/eureka_double.py, in a thread) holds ``--apps`` 1,000
applications x ``--instances`` 3, registered as Spring Cloud clients register them
(metadata with ``management.port`` and ``prometheus.path``). Two eureka_sd discoverers
follow it in the same run, refresh after refresh:

- ``delta``: sdbridge's default, one full fetch then ``/apps/delta`` reconciled with
  ``apps__hashcode`` (as Eureka's own client does);
- ``full``: ``delta: false``, a full ``/apps`` every refresh, as Prometheus's eureka_sd
  does (same decoder, so the difference is the protocol, not the language).

The registry is loaded, then left alone for 10 minutes of an injected clock (the delta
queue keeps 3), then refreshed every 30 s of that clock; between refreshes ``--changes``
instances change (a status flip, a re-registration with
new metadata, a cancel and a new instance, in turn). For each refresh the bench records
the bytes the double sent (gzip on the wire, as both Eureka and aiohttp negotiate it, and
the XML before compression), the CPU spent decoding the answer (``thread_time`` of the
thread that decodes it: the event loop's for a small answer, a worker's for a large one)
and the rest of the refresh's CPU on the event loop's thread (HTTP, merge, target
groups); the double's own thread is not counted. Both
discoverers' targets are compared after every refresh: they must be equal.

Run: ``.venv/bin/python bench/eureka_load.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.doubles.eureka_double import EurekaDouble, instance, running  # noqa: E402

from sdbridge.discovery.base import DiscoveryContext  # noqa: E402
from sdbridge.discovery.eureka import INLINE_DECODE_MAX, EurekaDiscoverer, EurekaSDConfig  # noqa: E402

REFRESH_INTERVAL = 30.0  # eureka_sd's default


class Clock:
    """The double's and the discoverers' clock: refreshes 30 s apart without waiting."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def populate(double: EurekaDouble, apps: int, instances: int) -> list[tuple[str, str]]:
    keys = []
    for a in range(apps):
        for i in range(instances):
            host = f"127.0.{a // 250}.{(a % 250) + 1}"
            record = instance(
                f"service-{a:04d}",
                host,
                8080 + i,
                metadata={
                    "management.port": str(9080 + i),
                    "prometheus.path": "/actuator/prometheus",
                    "zone": f"zone-{i % 3}",
                    "version": "1.4.2",
                },
            )
            keys.append((record["app"], double.register(record)))
    return keys


def change(double: EurekaDouble, keys: list[tuple[str, str]], step: int, count: int) -> None:
    for n in range(count):
        app, key = keys[(step * 7919 + n * 104729) % len(keys)]
        kind = (step + n) % 3
        if kind == 0:
            double.set_status(app, key, "DOWN" if step % 2 else None)
        elif kind == 1:
            double.update_metadata(app, key, {"version": f"1.4.{step}"})
        else:
            records = [r for r in double.instances() if r["app"] == app and r["instanceId"] == key]
            if records and double.cancel(app, key):
                double.register(
                    {**records[0], "metadata": {**records[0]["metadata"], "step": str(step)}}
                )


async def refresh(
    discoverer: EurekaDiscoverer, double: EurekaDouble
) -> tuple[int, int, float, float]:
    """One refresh: wire bytes, XML bytes, decode CPU and the rest of the refresh's CPU."""
    wire, body = sum(double.bytes_sent.values()), sum(double.body_bytes.values())
    decode, cpu = discoverer.decode_cpu, time.thread_time()
    await discoverer.refresh()
    cpu = time.thread_time() - cpu
    decode = discoverer.decode_cpu - decode
    body = sum(double.body_bytes.values()) - body
    # An answer larger than INLINE_DECODE_MAX is decoded in a worker thread, not this one.
    rest = cpu if body > INLINE_DECODE_MAX else cpu - decode
    return sum(double.bytes_sent.values()) - wire, body, decode, max(rest, 0.0)


def targets(discoverer: EurekaDiscoverer) -> list[dict[str, str]]:
    return sorted(
        (t for g in discoverer.groups.values() for t in g.targets),
        key=lambda t: t["__address__"] + t.get("instance", ""),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=3)
    parser.add_argument("--refreshes", type=int, default=20)
    parser.add_argument("--changes", type=int, default=5, help="changes between refreshes")
    args = parser.parse_args()
    clock = Clock()
    with running(clock=clock) as double:
        keys = populate(double, args.apps, args.instances)
        clock.now += 600  # the registry has been stable for a while: an empty delta queue
        modes = {
            "delta": EurekaDiscoverer(
                EurekaSDConfig(server=double.url), DiscoveryContext(job="delta", mechanism="eureka")
            ),
            "full": EurekaDiscoverer(
                EurekaSDConfig(server=double.url, delta=False),
                DiscoveryContext(job="full", mechanism="eureka"),
            ),
        }
        figures: dict[str, list[tuple[int, int, float, float]]] = {name: [] for name in modes}
        first: dict[str, tuple[int, int, float, float]] = {}
        for name, discoverer in modes.items():
            discoverer.clock = clock
            first[name] = await refresh(discoverer, double)
        for step in range(args.refreshes):
            clock.now += REFRESH_INTERVAL
            change(double, keys, step, args.changes)
            for name, discoverer in modes.items():
                figures[name].append(await refresh(discoverer, double))
            assert targets(modes["delta"]) == targets(modes["full"]), f"targets differ at {step}"
        for discoverer in modes.values():
            await discoverer.http.close()
        total = len(double.instances())
        fetches = {name: dict(d.fetches) for name, d in modes.items()}

    print(
        f"{args.apps} apps x {args.instances} instances = {total} targets;"
        f" {args.changes} changes between each of {args.refreshes} refreshes"
    )
    print(
        f"first refresh (full fetch, both): {first['full'][0] / 1e3:.0f} kB on the wire,"
        f" {first['full'][1] / 1e6:.2f} MB XML, {first['full'][2] * 1e3:.0f} ms decode CPU,"
        f" {first['full'][3] * 1e3:.0f} ms other CPU"
    )
    print(f"fetches: {fetches}")
    print(
        f"{'per refresh (median)':<22}{'wire bytes':>12}{'XML bytes':>12}{'decode ms':>11}{'other ms':>10}"
    )
    medians = {}
    for name, rows in figures.items():
        row = tuple(statistics.median(r[i] for r in rows) for i in range(4))
        medians[name] = row
        print(f"{name:<22}{row[0]:>12.0f}{row[1]:>12.0f}{row[2] * 1e3:>11.1f}{row[3] * 1e3:>10.1f}")
    d, f = medians["delta"], medians["full"]
    print(
        f"full / delta: {f[0] / d[0]:.0f}x wire bytes, {f[1] / d[1]:.0f}x XML bytes,"
        f" {f[2] / d[2]:.0f}x decode CPU, {(f[2] + f[3]) / (d[2] + d[3]):.0f}x refresh CPU;"
        " both one request per refresh"
    )


if __name__ == "__main__":
    asyncio.run(main())
