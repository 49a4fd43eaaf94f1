"""``GET /sd/<job>`` with 10,000 targets under concurrent load: sdbridge vs nginx, same bytes.

Run: ``.venv/bin/python bench/http_sd_wrk.py [--targets 10000] [--duration 10] [--connections 32]``

In one run, on 127.0.0.1 and free ports:

- ``sdbridge run`` with one exec job listing ``--targets`` targets (5 labels each);
- Debian's nginx (nginx-light) with a temporary config, one worker process (sdbridge is
  one process too), serving the exact bytes of ``/sd/<job>`` as a static file, plus a
  ``.gz`` twin for ``gzip_static``.

Both are checked to serve identical bodies first. Then ``wrk`` (Debian) loads each in
turn with the same threads, connections and duration, in three scenarios a Prometheus
fleet produces:

- ``identity``: the full JSON body, no compression;
- ``gzip``: ``Accept-Encoding: gzip`` (what Prometheus's Go client sends);
- ``304``: ``If-None-Match`` with the server's own current ETag.

It prints requests/s, p99 latency and the server's CPU time per request (user + system
time of its process group, from /proc) for both, and the ratios sdbridge / nginx. CPU
time per request is the figure to trust on a shared machine: throughput and latency
move with whatever else runs on the cores. nginx is a ceiling, not a peer: a C server
doing sendfile from the page cache.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import ManagedProcess, free_port, http_ok, wait_until  # noqa: E402
from tests.servers.sdbridge import Sdbridge  # noqa: E402

JOB = "bench"
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def targets_file(path: Path, count: int) -> None:
    """Write ``count`` file_sd groups on 127.0.0.0/8 with five labels each."""
    groups = [
        {
            "targets": [f"127.{1 + n // 62500}.{n // 250 % 250}.{1 + n % 250}:9100"],
            "labels": {
                "env": ("prod", "staging", "dev")[n % 3],
                "dc": f"dc{n % 4}",
                "team": f"team-{n % 17}",
                "__meta_bench_service": f"service-{n % 101}",
                "__meta_bench_instance_id": f"i-{n:08x}",
            },
        }
        for n in range(count)
    ]
    path.write_text(json.dumps(groups))


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.read(), dict(response.headers)


def start_nginx(workdir: Path, body: bytes) -> tuple[ManagedProcess, str]:
    """nginx with one worker serving ``body`` as /sd/<job> (and its gzip twin)."""
    # nginx's worker drops root privileges: the temp dir (0700) must be traversable.
    workdir.chmod(0o755)
    root = workdir / "www"
    (root / "sd").mkdir(parents=True)
    static = root / "sd" / JOB
    static.write_bytes(body)
    (root / "sd" / f"{JOB}.gz").write_bytes(gzip.compress(body, 6, mtime=0))
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {workdir}/tmp-body;
    proxy_temp_path {workdir}/tmp-proxy;
    fastcgi_temp_path {workdir}/tmp-fastcgi;
    uwsgi_temp_path {workdir}/tmp-uwsgi;
    scgi_temp_path {workdir}/tmp-scgi;
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        root {root};
        default_type application/json;
        gzip_static on;
        gzip_vary on;
    }}
}}
"""
    )
    process = ManagedProcess(
        ["/usr/sbin/nginx", "-c", str(conf), "-p", str(workdir)],
        log_path=workdir / "nginx.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http_ok(f"{url}/sd/{JOB}"), timeout=30, what="nginx")
    except BaseException:  # pytest's Failed is a BaseException
        process.stop()
        raise
    return process, url


def seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def cpu_seconds(process_group: int) -> float:
    """User + system CPU time of every live process in ``process_group`` (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After the command: state ppid pgrp session ... utime(12) stime(13), 0-based.
        if int(fields[2]) == process_group:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def wrk(
    url: str, headers: dict[str, str], args: argparse.Namespace, server_group: int
) -> dict[str, float]:
    """Run wrk once; return requests/s, p99 latency (s) and server CPU time per request."""
    cpu_before = cpu_seconds(server_group)
    argv = [
        "wrk",
        f"-t{args.threads}",
        f"-c{args.connections}",
        f"-d{args.duration}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True, timeout=args.duration + 60
    ).stdout
    cpu = cpu_seconds(server_group) - cpu_before
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if errors or socket_errors:
        print(f"  warning: {url} {headers}: {(errors or socket_errors).group(0)}")  # type: ignore[union-attr]
    return {"rps": rps, "p99": p99, "cpu_us": cpu / max(requests, 1) * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="sdbridge-bench-http-sd-") as tmp:
        workdir = Path(tmp)
        targets_file(workdir / "targets.json", args.targets)
        config = {
            "jobs": [
                {
                    "name": JOB,
                    "exec_sd_configs": [
                        {
                            "command": ["cat", str(workdir / "targets.json")],
                            "refresh_interval": "1h",
                        }
                    ],
                }
            ]
        }
        (workdir / "sdbridge").mkdir()
        bridge = Sdbridge(workdir / "sdbridge", config)
        nginx = None
        try:
            sd_url = f"{bridge.url}/sd/{JOB}"
            body, sd_headers = fetch(sd_url)
            nginx, nginx_base = start_nginx(workdir, body)
            nginx_url = f"{nginx_base}/sd/{JOB}"
            nginx_body, nginx_headers = fetch(nginx_url)
            assert nginx_body == body, "nginx must serve the same bytes"
            assert len(json.loads(body)) == args.targets
            gz_sd, h1 = fetch(sd_url, {"Accept-Encoding": "gzip"})
            gz_nginx, h2 = fetch(nginx_url, {"Accept-Encoding": "gzip"})
            assert h1.get("Content-Encoding") == h2.get("Content-Encoding") == "gzip"
            assert gzip.decompress(gz_sd) == gzip.decompress(gz_nginx) == body
            print(
                f"/sd/{JOB}: {args.targets:,} targets, {len(body):,} bytes "
                f"({len(gz_sd):,} gzipped by sdbridge, {len(gz_nginx):,} by nginx); wrk "
                f"-t{args.threads} -c{args.connections} -d{args.duration}s on 127.0.0.1"
            )
            scenarios = {
                "identity": ({}, {}),
                "gzip": ({"Accept-Encoding": "gzip"}, {"Accept-Encoding": "gzip"}),
                "304": (
                    {"If-None-Match": sd_headers["ETag"]},
                    {"If-None-Match": nginx_headers["ETag"]},
                ),
            }
            rows = []
            for name, (sd_h, nginx_h) in scenarios.items():
                ours = wrk(sd_url, sd_h, args, bridge.process.pid)
                time.sleep(1)
                theirs = wrk(nginx_url, nginx_h, args, nginx.pid)
                time.sleep(1)
                rows.append((name, ours, theirs))
            print()
            print(
                f"{'scenario':<10}{'sdbridge req/s':>16}{'nginx req/s':>14}{'ratio':>8}"
                f"{'sdbridge p99':>15}{'nginx p99':>12}{'ratio':>8}"
                f"{'sdbridge CPU/req':>18}{'nginx CPU/req':>15}{'ratio':>8}"
            )
            for name, ours, theirs in rows:
                print(
                    f"{name:<10}{ours['rps']:>16,.0f}{theirs['rps']:>14,.0f}"
                    f"{ours['rps'] / theirs['rps']:>8.2f}"
                    f"{ours['p99'] * 1000:>13.2f}ms{theirs['p99'] * 1000:>10.2f}ms"
                    f"{ours['p99'] / theirs['p99']:>8.2f}"
                    f"{ours['cpu_us']:>16.0f}us{theirs['cpu_us']:>13.0f}us"
                    f"{ours['cpu_us'] / max(theirs['cpu_us'], 1e-9):>8.2f}"
                )
            print(
                "\nratio = sdbridge / nginx (throughput: higher is better; p99 and CPU time per"
                "\nrequest: lower is better). CPU/req is the server's own user+system time per"
                "\nrequest served: it holds steady when other work shares the cores."
            )
        finally:
            if nginx is not None:
                nginx.stop()
            bridge.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
