"""Load on Consul and change latency: sdbridge's consul_sd vs vmagent's, side by side.

One Consul API double (a separate process, tests/doubles/consul_double.py) holds 1,000
services x 5 instances (100 nodes, one check per instance). ``sdbridge run`` and Debian's
vmagent 1.79 watch it at the same time; the double tells their requests and connections
apart by User-Agent. Both use the same blocking-query wait (``--wait``, default 20s,
passed to vmagent as -promscrape.consul.waitTime and to sdbridge as watch_timeout) so
the idle figures compare like with like; the report also projects both at their
default waits (vmagent 1.79: 525s, sdbridge: 5m).

Measured:
- idle: requests per minute to Consul and open connections, over ``--idle`` seconds;
- change -> visible: a new instance registered with its check, and a health flip, until
  it shows in sdbridge's file and in vmagent's /api/v1/targets discoveredLabels; and a
  re-registration that changes only a port (no check moves: sdbridge must sweep).

vmagent runs with -promscrape.consulSDCheckInterval=1s (its default, 30s, would add up
to 30s to its latency). Run: ``.venv/bin/python bench/consul_load.py``.

So that the latency figures can be read, each change phase also reports the CPU each
process used (from /proc) and how long the double took to answer a probe request
(``/v1/agent/self`` every 50 ms): if the probe stays fast, the double was not what held
the answers back.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.servers.common import ManagedProcess, free_port, http_ok  # noqa: E402
from tests.servers.vmagent import VMAgent  # noqa: E402

SERVICES = 1000
INSTANCES = 5
NODES = 100


def call(url: str, method: str, **kwargs: Any) -> Any:
    """Call a method of the double's control API."""
    request = urllib.request.Request(
        f"{url}/_double/call",
        data=json.dumps({"method": method, "kwargs": kwargs}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)["result"]


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_double/stats", timeout=30) as response:
        return dict(json.load(response))


def dataset() -> list[dict[str, Any]]:
    """1,000 services x 5 instances on 100 nodes (127.0.0.x), one check per instance."""
    nodes: list[dict[str, Any]] = [
        {
            "node": f"node-{n:03d}",
            "address": f"127.0.{1 + n // 250}.{1 + n % 250}",
            "meta": {"rack": f"r{n % 10}"},
            "tagged_addresses": {"lan": f"127.0.{1 + n // 250}.{1 + n % 250}"},
            "checks": [{"id": "serfHealth", "status": "passing"}],
            "services": [],
        }
        for n in range(NODES)
    ]
    for s in range(SERVICES):
        for i in range(INSTANCES):
            node = nodes[(s * INSTANCES + i) % NODES]
            service_id = f"svc-{s:04d}-{i}"
            node["services"].append(
                {
                    "name": f"svc-{s:04d}",
                    "id": service_id,
                    "port": 10000 + s * INSTANCES + i,
                    "tags": ["bench", f"team-{s % 7}"],
                    "meta": {"version": "1"},
                    "checks": [{"id": f"check-{service_id}", "status": "passing"}],
                }
            )
    return nodes


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Probe:
    """While running: CPU used by each process, and the double's answer time to a cheap
    request every 50 ms, i.e. how long a request waits for the double's event loop."""

    def __init__(self, url: str, pids: dict[str, int]) -> None:
        self.url, self.pids = url, pids
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._cpu = {who: cpu_seconds(pid) for who, pid in self.pids.items()}
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        elapsed = time.monotonic() - self._started
        self.cpu = {
            who: (cpu_seconds(pid) - self._cpu[who]) / elapsed for who, pid in self.pids.items()
        }
        self.load = os.getloadavg()[0]

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            started = time.monotonic()
            with urllib.request.urlopen(f"{self.url}/v1/agent/self", timeout=30) as response:
                response.read()
            self.latencies.append(time.monotonic() - started)

    def summary(self) -> str:
        cpu = ", ".join(f"{who} {share:.0%}" for who, share in self.cpu.items())
        probe = self.latencies
        return (
            f"CPU (share of one core): {cpu}; load average {self.load:.1f}; double's answer "
            f"to a probe p50 / p99 / max: {statistics.median(probe) * 1000:.0f} / "
            f"{percentile(probe, 0.99) * 1000:.0f} / {max(probe) * 1000:.0f} ms (n={len(probe)})"
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class SdbridgeWatch:
    """Reads sdbridge's output file: target address -> labels."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime = 0
        self._targets: dict[str, dict[str, str]] = {}

    def targets(self) -> dict[str, dict[str, str]]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {}
        if mtime != self._mtime:
            self._mtime = mtime
            groups = orjson.loads(self.path.read_bytes())
            self._targets = {t: g["labels"] for g in groups for t in g["targets"]}
        return self._targets


def vm_targets(agent: VMAgent) -> dict[str, dict[str, str]]:
    return {t["__address__"]: t for t in agent.targets("consul")}


def vm_raw(agent: VMAgent) -> str:
    """vmagent's /api/v1/targets as text: searching it is far cheaper than decoding 5 MB."""
    with urllib.request.urlopen(f"{agent.url}/api/v1/targets", timeout=30) as response:
        return str(response.read().decode("utf-8"))


def vm_has(agent: VMAgent, address: str, health: str | None = None) -> bool:
    """Whether vmagent lists ``address`` (with that health); labels are sorted by name."""
    text = vm_raw(agent)
    if health is None:
        return f'"__address__":"{address}"' in text
    pattern = (
        f'"__address__":"{re.escape(address)}","__meta_consul_address":"[^"]*",'
        f'"__meta_consul_dc":"[^"]*","__meta_consul_health":"{health}"'
    )
    return re.search(pattern, text) is not None


EARLY_VMAGENT: list[float] = []  # changes vmagent already showed when sdbridge did


def wait_visible(
    check_sdbridge: Any, check_vmagent: Any | None, started: float, limit: float = 60.0
) -> tuple[float | None, float | None]:
    """Poll both sides until each shows the change; their latencies (None: not seen).

    vmagent's target list is 5 MB: producing and searching it takes about a third of a
    core at 4 polls/s, which would be taken from sdbridge and the double on this 2-core
    machine while sdbridge's latency is being measured. So vmagent is polled (every
    0.25 s) only once sdbridge shows the change, or after 2 s. If vmagent already shows
    it at its first poll, its latency is an upper bound; such changes are counted."""
    seen_sd: float | None = None
    seen_vm: float | None = 0.0 if check_vmagent is None else None
    next_vm = 0.0
    first_vm = True
    while time.monotonic() - started < limit and (seen_sd is None or seen_vm is None):
        now = time.monotonic()
        if seen_sd is None and check_sdbridge():
            seen_sd = time.monotonic() - started
        vm_due = seen_sd is not None or now - started >= 2.0
        if seen_vm is None and vm_due and now >= next_vm and check_vmagent is not None:
            if check_vmagent():
                seen_vm = time.monotonic() - started
                if first_vm:
                    EARLY_VMAGENT.append(seen_vm)
            first_vm = False
            next_vm = time.monotonic() + 0.25
        time.sleep(0.01)
    return seen_sd, seen_vm


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wait", type=int, default=20, help="blocking-query wait, seconds")
    parser.add_argument("--idle", type=float, default=60.0, help="idle window, seconds")
    parser.add_argument("--changes", type=int, default=20, help="changes of each kind")
    parser.add_argument("--sweeps", type=int, default=5, help="port-only re-registrations")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="consul-bench-"))
    processes: list[Any] = []
    try:
        # The double in its own process: its CPU is not the clients'.
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        double = ManagedProcess(
            [sys.executable, "-m", "tests.doubles.consul_double", "--port", str(port), "--jitter"],
            log_path=work / "double.log",
            cwd=ROOT,
            env={"PYTHONPATH": str(ROOT)},
        )
        processes.append(double)
        deadline = time.monotonic() + 30
        while not http_ok(f"{url}/_double/stats"):
            if time.monotonic() > deadline or not double.alive():
                raise SystemExit(f"the double did not start: {double.log_text()}")
            time.sleep(0.1)
        started = time.monotonic()
        call(url, "load", dataset=dataset())
        print(
            f"loaded {SERVICES} services x {INSTANCES} instances in {time.monotonic() - started:.1f}s"
        )

        # sdbridge
        out = work / "consul.json"
        config = {
            "global": {"data_dir": str(work / "data")},
            "jobs": [
                {
                    "name": "consul",
                    "consul_sd_configs": [
                        {
                            "server": f"127.0.0.1:{port}",
                            "watch_timeout": f"{args.wait}s",
                            "refresh_interval": "5s",
                        }
                    ],
                    "output": {"file": str(out)},
                }
            ],
        }
        (work / "sdbridge.yml").write_text(yaml.safe_dump(config))
        web_port = free_port()
        sdbridge = ManagedProcess(
            [
                str(ROOT / ".venv" / "bin" / "sdbridge"),
                "run",
                f"--config.file={work / 'sdbridge.yml'}",
                f"--web.listen-address=127.0.0.1:{web_port}",
            ],
            log_path=work / "sdbridge.log",
        )
        processes.append(sdbridge)
        sd = SdbridgeWatch(out)
        total = SERVICES * INSTANCES
        started = time.monotonic()
        while len(sd.targets()) != total:
            if time.monotonic() - started > 300 or not sdbridge.alive():
                raise SystemExit(f"sdbridge did not sync: {sdbridge.log_text()[-2000:]}")
            time.sleep(0.05)
        sd_sync = time.monotonic() - started
        time.sleep(2)
        pids = {"double": double.pid, "sdbridge": sdbridge.pid, "bench": os.getpid()}
        with Probe(url, pids) as probe_alone:
            alone = measure_changes(url, sd, None, args, offset=0)

        agent = VMAgent(
            work / "vmagent",
            [{"job_name": "consul", "consul_sd_configs": [{"server": f"127.0.0.1:{port}"}]}],
            extra_flags=[f"-promscrape.consul.waitTime={args.wait}s"],
        )
        processes.append(agent)
        started = time.monotonic()
        vm_sync = None
        while vm_sync is None and time.monotonic() - started < 300:
            if vm_raw(agent).count('"__address__"') >= total:
                vm_sync = time.monotonic() - started
            time.sleep(0.2)
        print(f"first full sync: sdbridge {sd_sync:.1f}s, vmagent {vm_sync:.1f}s")

        # Idle: let every long-poll cycle at least once, then count.
        time.sleep(args.wait * 1.2)
        before = stats(url)
        time.sleep(args.idle)
        after = stats(url)
        minutes = args.idle / 60
        idle = {
            who: (after["requests_by_agent"].get(who, 0) - before["requests_by_agent"].get(who, 0))
            / minutes
            for who in ("sdbridge", "vmagent")
        }
        connections = after["connections_by_agent"]

        with Probe(url, {**pids, "vmagent": agent.process.pid}) as probe_both:
            latencies = measure_changes(url, sd, agent, args, offset=500)
        report(args, idle, connections, alone, latencies, sd_sync, vm_sync)
        print(f"sdbridge alone: {probe_alone.summary()}")
        print(f"side by side: {probe_both.summary()}")
        print(
            f"vmagent already showed {len(EARLY_VMAGENT)} change(s) at its first poll "
            "(its latency for those is an upper bound)"
        )
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        if os.environ.get("KEEP_BENCH_DIR") is None:
            subprocess.run(["rm", "-rf", str(work)], check=False)


def measure_changes(
    url: str, sd: SdbridgeWatch, agent: VMAgent | None, args: argparse.Namespace, offset: int
) -> dict[str, dict[str, list[float]]]:
    """A new instance with its check, a health flip, a port-only re-registration: how long
    until each shows in sdbridge's file and (if running) vmagent's targets."""

    def vm(address: str, health: str | None = None) -> Any:
        return None if agent is None else (lambda: vm_has(agent, address, health))

    latencies: dict[str, dict[str, list[float]]] = {
        kind: {"sdbridge": [], "vmagent": []} for kind in ("register", "health", "sweep")
    }
    for k in range(offset, offset + args.changes):
        service = f"svc-{(k * 37) % SERVICES:04d}"
        node = f"node-{(k * 13) % NODES:03d}"
        address = dataset()[(k * 13) % NODES]["address"]
        port_k = 60000 + k
        target = f"{address}:{port_k}"
        started = time.monotonic()
        # One catalog write with its check, as an agent's sync does.
        call(
            url,
            "register_service",
            node=node,
            name=service,
            port=port_k,
            service_id=f"new-{k}",
            tags=["bench"],
            checks=[{"id": f"check-new-{k}", "status": "passing"}],
        )
        a, b = wait_visible(
            lambda target=target: target in sd.targets(),
            vm(target),
            started,
        )
        record(latencies["register"], a, b)
    for k in range(offset, offset + args.changes):
        s, i = (k * 53) % SERVICES, k % INSTANCES
        service_id = f"svc-{s:04d}-{i}"
        target_address = _address_of(s, i)
        started = time.monotonic()
        call(
            url,
            "set_check_status",
            node=_node_of(s, i),
            check_id=f"check-{service_id}",
            status="critical",
        )
        a, b = wait_visible(
            lambda t=target_address: (
                sd.targets().get(t, {}).get("__meta_consul_health") == "critical"
            ),
            vm(target_address, "critical"),
            started,
        )
        record(latencies["health"], a, b)
    # A re-registration that changes only the port: no check moves, sdbridge sweeps.
    for k in range(offset, offset + args.sweeps):
        time.sleep(5.5)  # sdbridge's refresh_interval (5s) between sweeps
        s, i = (k * 71 + 3) % SERVICES, 0
        new_port = 61000 + k
        target = f"{_address_of(s, i).rsplit(':', 1)[0]}:{new_port}"
        started = time.monotonic()
        call(
            url,
            "register_service",
            node=_node_of(s, i),
            name=f"svc-{s:04d}",
            port=new_port,
            service_id=f"svc-{s:04d}-{i}",
            tags=["bench", f"team-{s % 7}"],
            meta={"version": "1"},
        )
        a, b = wait_visible(
            lambda target=target: target in sd.targets(),
            vm(target),
            started,
        )
        record(latencies["sweep"], a, b)
    return latencies


def _node_of(s: int, i: int) -> str:
    return f"node-{(s * INSTANCES + i) % NODES:03d}"


def _address_of(s: int, i: int) -> str:
    n = (s * INSTANCES + i) % NODES
    return f"127.0.{1 + n // 250}.{1 + n % 250}:{10000 + s * INSTANCES + i}"


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} / {percentile(values, 0.99):.2f} / {max(values):.2f}"


def record(bucket: dict[str, list[float]], sd: float | None, vm: float | None) -> None:
    bucket["sdbridge"].append(sd if sd is not None else float("inf"))
    bucket["vmagent"].append(vm if vm is not None else float("inf"))


def report(
    args: argparse.Namespace,
    idle: dict[str, float],
    connections: dict[str, int],
    alone: dict[str, dict[str, list[float]]],
    latencies: dict[str, dict[str, list[float]]],
    sd_sync: float | None,
    vm_sync: float | None,
) -> None:
    print()
    print(f"## consul_load: {SERVICES} services x {INSTANCES} instances, wait={args.wait}s")
    print()
    print("| | sdbridge | vmagent 1.79 | ratio |")
    print("|---|---:|---:|---:|")
    fmt = _fmt
    ratio = idle["vmagent"] / idle["sdbridge"] if idle["sdbridge"] else float("inf")
    print(
        f"| idle requests/min (wait {args.wait}s) | {idle['sdbridge']:.1f} | {idle['vmagent']:.0f} | {ratio:.0f}x fewer |"
    )
    # Projection at each one's default wait: requests per minute = long-polls * 60 / wait.
    sd_default = 3 * 60 / 300
    vm_default = (SERVICES + 1) * 60 / 525
    print(
        f"| idle requests/min at default waits (5m / 525s) | {sd_default:.1f} | {vm_default:.0f} | {vm_default / sd_default:.0f}x fewer |"
    )
    c_sd, c_vm = connections.get("sdbridge", 0), connections.get("vmagent", 0)
    print(f"| open connections at idle | {c_sd} | {c_vm} | {c_vm / max(c_sd, 1):.0f}x fewer |")
    print(f"| first full sync (s) | {sd_sync:.1f} | {vm_sync:.1f} | |")
    for kind, label in (
        ("register", "new instance with check → visible"),
        ("health", "health flip → visible"),
        ("sweep", "port-only re-registration → visible"),
    ):
        a, b = latencies[kind]["sdbridge"], latencies[kind]["vmagent"]
        solo = alone[kind]["sdbridge"]
        if not a:
            continue
        print(f"| {label}, side by side: p50 / p99 / max (s, n={len(a)}) | {fmt(a)} | {fmt(b)} | |")
        print(f"| {label}, sdbridge alone: p50 / p99 / max (s, n={len(solo)}) | {fmt(solo)} | | |")
    print()
    print("vmagent's figures include its -promscrape.consulSDCheckInterval=1s refresh and a")
    print("0.25s polling resolution of its /api/v1/targets; sdbridge's include publish_delay.")


if __name__ == "__main__":
    raise SystemExit(main())
