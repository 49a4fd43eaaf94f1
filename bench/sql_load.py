"""sql_sd on PostgreSQL with a 100,000-row, 12-column inventory: cost, latency, idle load.

Run: ``.venv/bin/python bench/sql_load.py [--rows 100000] [--changes 30] [--idle 60]``

One real PostgreSQL (Debian's, tests/servers/postgres.py, with pg_stat_statements) on
127.0.0.1 holds ``hosts``: ``--rows`` rows of 12 columns (address, host, port, 7 text
columns, a ``labels`` jsonb and ``updated_at``), an index on ``updated_at``, a statement
trigger that NOTIFYs, and a one-row ``hosts_version`` table a trigger bumps on every change.
Three measurements, each against a baseline measured in the same run:

1. **Full refresh vs the bare driver.** ``SQLDiscoverer.refresh()`` (read-only
   transaction, cursor, mapping every row to labels, target groups) against the floor of
   fetching the same rows with asyncpg's ``fetch`` and nothing else. "Cold" maps every
   row (a first refresh); "warm" is the same refresh again, when the unchanged rows reuse
   their targets. Median of ``--repeat``, the three measured alternately.
2. **NOTIFY change -> file.** ``sdbridge run`` with ``notify_channel`` (default
   ``publish_delay``); a row is inserted, a thread that stats the output file every 2 ms
   notes when the new address first appears in it, and the next row follows 0.2-0.8 s
   after that (one change at a time: each figure is one change, not a queue). p50/p99/max.
3. **Idle database cost.** Three ``sdbridge run`` processes, each as its own role, follow
   the same idle table for ``--idle`` seconds after their first sync: ``change_query``
   ``SELECT max(updated_at), count(*) FROM hosts`` every 5 s (the issue's example),
   ``change_query`` on the trigger-maintained ``hosts_version`` every 5 s, and the
   baseline: the full query every 30 s (plain poll). pg_stat_statements gives each role's
   statements, total execution time and blocks touched (shared hit + read).
   The window is ``--idle`` seconds (default 60 s) instead of many minutes: each
   variant's cost per poll (its statements divided by its polls seen) is multiplied by its
   polls per minute (12 at 5 s, 2 at 30 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.servers.common import free_port  # noqa: E402
from tests.servers.postgres import PostgresServer, postgres_server  # noqa: E402

from sdbridge.discovery.base import DiscoveryContext  # noqa: E402
from sdbridge.discovery.sql import SQLDiscoverer, SQLSDConfig  # noqa: E402
from sdbridge.discovery.sql.mapping import RowMapper  # noqa: E402

DATABASE = "cmdb"
PASSWORD = "bench-reader-pw"
QUERY = (
    "SELECT address, host, port, env, dc, rack, team, owner, os, role, labels, updated_at"
    " FROM hosts"
)
CHANNEL = "hosts_changed"
POLL = 30.0
CHANGE_INTERVAL = 5.0
MAX_ROWS = 1_000_000  # the changes add rows past the default 100,000


def setup(server: PostgresServer, rows: int) -> None:
    """Create the database, the roles, the table and its triggers; load ``rows`` rows."""
    server.psql(f"CREATE DATABASE {DATABASE}")
    for role in ("bench_reader", "idle_count", "idle_version", "idle_poll"):
        server.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'")
        server.psql(f"GRANT pg_read_all_data TO {role}")
    server.psql_many(
        [
            "CREATE EXTENSION pg_stat_statements",
            "CREATE TABLE hosts (id bigserial PRIMARY KEY, address text, host text, port int,"
            " env text, dc text, rack text, team text, owner text, os text, role text,"
            " labels jsonb, updated_at timestamptz NOT NULL DEFAULT now())",
            # 127.0.0.x/127.0.1.x addresses: nothing ever scrapes them.
            f"INSERT INTO hosts (address, host, port, env, dc, rack, team, owner, os, role,"
            f" labels) SELECT '127.0.' || (g / 60000) || '.' || (g / 250 % 240 + 1) || ':'"
            f" || (10000 + g % 250), '127.0.' || (g / 60000) || '.' || (g / 250 % 240 + 1),"
            f" 10000 + g % 250, (ARRAY['prod','staging','dev'])[g % 3 + 1], 'dc' || g % 4,"
            f" 'rack-' || g % 97, 'team-' || g % 31, 'owner' || g % 503, 'debian-12',"
            f" (ARRAY['web','db','cache','queue'])[g % 4 + 1],"
            f" jsonb_build_object('__metrics_path__', '/metrics', 'tier', 't' || g % 3)"
            f" FROM generate_series(0, {rows - 1}) g",
            # Every row its own time (a CMDB's rows change one by one).
            "UPDATE hosts SET updated_at = now() - id * interval '1 second'",
            "CREATE INDEX hosts_updated_at ON hosts (updated_at)",
            "CREATE TABLE hosts_version (version bigint NOT NULL)",
            "INSERT INTO hosts_version VALUES (1)",
            "CREATE FUNCTION hosts_changed() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
            f" UPDATE hosts_version SET version = version + 1; PERFORM pg_notify('{CHANNEL}', '');"
            " RETURN NULL; END $$",
            "CREATE TRIGGER hosts_changed AFTER INSERT OR UPDATE OR DELETE ON hosts"
            " FOR EACH STATEMENT EXECUTE FUNCTION hosts_changed()",
            "VACUUM ANALYZE hosts",
        ],
        DATABASE,
    )


def dsn(server: PostgresServer, role: str = "bench_reader") -> str:
    return server.dsn(role, PASSWORD, DATABASE, "sslmode=disable")


# --- 1. full refresh vs the bare driver -------------------------------------------------------


async def full_vs_bare(server: PostgresServer, repeat: int) -> dict[str, float]:
    """Median times of the bare fetch and of full refreshes, cold and warm, alternated."""
    conn = await asyncpg.connect(dsn(server))
    config = SQLSDConfig(dsn=dsn(server), query=QUERY)  # type: ignore[arg-type]
    discoverer = SQLDiscoverer(config, DiscoveryContext(job="bench", mechanism="sql"))
    bare, cold, warm = [], [], []
    for _ in range(repeat):  # alternated, so a busy moment of the machine hits all three
        started = time.perf_counter()
        rows = await conn.fetch(QUERY)
        bare.append(time.perf_counter() - started)
        # Cold: every row mapped (the first refresh, or after the columns changed).
        discoverer._mapper = RowMapper()
        started = time.perf_counter()
        groups = await discoverer.refresh()
        cold.append(time.perf_counter() - started)
        # Warm: the same rows again (a refresh that finds nothing changed).
        started = time.perf_counter()
        await discoverer.refresh()
        warm.append(time.perf_counter() - started)
    await conn.close()
    await discoverer.close()
    assert len(groups) == len(rows), (len(groups), len(rows))
    return {
        "bare": statistics.median(bare),
        "full": statistics.median(cold),
        "warm": statistics.median(warm),
        "rows": len(rows),
    }


# --- sdbridge processes -----------------------------------------------------------------


class Sdbridge:
    """``sdbridge run`` with one sql_sd_configs job writing ``<name>.json``."""

    def __init__(self, workdir: Path, name: str, sd_config: dict[str, Any]) -> None:
        self.output = workdir / f"{name}.json"
        config = {
            "global": {"data_dir": str(workdir / f"data-{name}")},
            "jobs": [
                {
                    "name": name,
                    "sql_sd_configs": [sd_config],
                    "output": {"file": str(self.output)},
                }
            ],
        }
        path = workdir / f"{name}.yml"
        path.write_text(json.dumps(config))
        self.port = free_port()
        self.log = open(workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                str(REPO / ".venv/bin/sdbridge"),
                "run",
                f"--config.file={path}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_synced(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.output.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"sdbridge {self.output.stem} did not sync; see its log")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# --- 2. NOTIFY change -> file --------------------------------------------------------------


def notify_latency(server: PostgresServer, workdir: Path, changes: int) -> list[float]:
    sd = Sdbridge(
        workdir,
        "notify",
        {
            "dsn": dsn(server),
            "query": QUERY,
            "notify_channel": CHANNEL,
            "refresh_interval": "1h",
            "max_rows": MAX_ROWS,
        },
    )
    try:
        sd.wait_synced()
        seen: dict[bytes, float] = {}
        pending: dict[bytes, float] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def monitor() -> None:
            last = None
            while not stop.is_set():
                try:
                    stat = sd.output.stat()
                except FileNotFoundError:
                    continue
                key = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
                if key != last:
                    last = key
                    data = sd.output.read_bytes()
                    now = time.monotonic()
                    with lock:
                        for address in list(pending):
                            if address in data:
                                seen[address] = now - pending.pop(address)
                time.sleep(0.002)

        thread = threading.Thread(target=monitor, daemon=True)
        thread.start()
        for n in range(changes):
            address = f"127.0.3.{n % 250 + 1}:{20000 + n}"
            key = f'"{address}"'.encode()
            with lock:
                pending[key] = time.monotonic()
            server.psql(
                f"INSERT INTO hosts (address, host, port, env) VALUES ('{address}',"
                f" '127.0.3.{n % 250 + 1}', {20000 + n}, 'bench')",
                DATABASE,
            )
            # One change at a time: the next one waits until this one is in the file, so
            # each figure is one change's latency, not a queue of them.
            deadline = time.monotonic() + 60
            while key in pending and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(random.uniform(0.2, 0.8))
        stop.set()
        thread.join()
        if pending:
            raise SystemExit(f"{len(pending)} change(s) never reached the file")
        return sorted(seen.values())
    finally:
        sd.stop()


# --- 3. idle database cost ----------------------------------------------------------------


def idle_cost(server: PostgresServer, workdir: Path, seconds: float) -> dict[str, dict[str, float]]:
    variants = {
        "idle_count": {
            "change_query": "SELECT max(updated_at), count(*) FROM hosts",
            "change_interval": f"{CHANGE_INTERVAL:g}s",
            "refresh_interval": "1h",
        },
        "idle_version": {
            "change_query": "SELECT version FROM hosts_version",
            "change_interval": f"{CHANGE_INTERVAL:g}s",
            "refresh_interval": "1h",
        },
        "idle_poll": {"refresh_interval": f"{POLL:g}s"},
    }
    processes = [
        Sdbridge(
            workdir, role, {"dsn": dsn(server, role), "query": QUERY, "max_rows": MAX_ROWS, **extra}
        )
        for role, extra in variants.items()
    ]
    try:
        for sd in processes:
            sd.wait_synced()
        server.psql("SELECT pg_stat_statements_reset()", DATABASE)
        time.sleep(seconds)
        figures = {}
        for role, extra in variants.items():
            # Each poll's statements (and their cost) per minute at the configured cadence:
            # a window of --idle seconds catches a whole number of 30 s polls only by luck.
            row = server.psql(
                "SELECT coalesce(sum(calls), 0), coalesce(sum(total_exec_time), 0),"
                " coalesce(sum(shared_blks_hit + shared_blks_read), 0),"
                " coalesce(sum(calls) FILTER (WHERE query LIKE 'SELECT%'), 0)"
                " FROM pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
                f" WHERE r.rolname = '{role}'",
                DATABASE,
            )
            calls, exec_ms, blocks, polls = (float(x) for x in row.split("|"))
            per_minute = 60.0 / (POLL if "change_query" not in extra else CHANGE_INTERVAL)
            polls = max(polls, 1.0)
            figures[role] = {
                "polls": polls,
                "statements": calls / polls * per_minute,
                "exec_ms": exec_ms / polls * per_minute,
                "blocks": blocks / polls * per_minute,
            }
        return figures
    finally:
        for sd in processes:
            sd.stop()


def percentile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="sdbridge-bench-sql-"))
    servers = postgres_server()
    server = next(servers)
    try:
        started = time.monotonic()
        setup(server, args.rows)
        print(f"loaded {args.rows} rows in {time.monotonic() - started:.1f}s", flush=True)

        one = asyncio.run(full_vs_bare(server, args.repeat))
        print(
            f"1. full refresh {one['full'] * 1000:.0f} ms vs bare asyncpg fetch"
            f" {one['bare'] * 1000:.0f} ms ({int(one['rows'])} rows):"
            f" {one['full'] / one['bare']:.2f}x (goal <= 3x); unchanged table (rows reused)"
            f" {one['warm'] * 1000:.0f} ms: {one['warm'] / one['bare']:.2f}x",
            flush=True,
        )

        latencies = notify_latency(server, workdir, args.changes)
        print(
            f"2. NOTIFY change -> file ({len(latencies)} changes):"
            f" p50 {percentile(latencies, 0.5) * 1000:.0f} ms,"
            f" p99 {percentile(latencies, 0.99) * 1000:.0f} ms,"
            f" max {latencies[-1] * 1000:.0f} ms (goal p99 <= 1 s)",
            flush=True,
        )

        idle = idle_cost(server, workdir, args.idle)
        poll = idle["idle_poll"]
        print(
            f"3. idle database cost per minute (per-poll cost measured over {args.idle:g}s,"
            " times polls per minute):"
        )
        for role, label in (
            ("idle_poll", "plain poll every 30s (baseline)"),
            ("idle_count", "change_query max(updated_at), count(*) every 5s"),
            ("idle_version", "change_query on hosts_version every 5s"),
        ):
            f = idle[role]
            print(
                f"   {label}: {f['statements']:.1f} statements ({f['polls']:.0f} polls seen),"
                f" {f['exec_ms']:.2f} ms exec,"
                f" {f['blocks']:.0f} blocks; vs poll: exec {f['exec_ms'] / poll['exec_ms']:.3f}x,"
                f" blocks {f['blocks'] / max(poll['blocks'], 1):.3f}x (goal <= 0.2x)"
            )
    finally:
        next(servers, None)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
