"""The web UI: server-rendered HTML pages with a little JavaScript.

``/`` lists the jobs with their state, last sync and errors, and the config's reload
status; ``/jobs/<job>`` shows a job's mechanisms and a paginated, filterable table of
its targets (``?q=words&page=N&per_page=M``, the same filter as the API);
``/jobs/<job>/service-discovery`` shows each target before and after relabeling
(:mod:`.sdview`); ``/registry`` lists the built-in registry's instances
(:mod:`.registryview`). Pages are built from the same data as ``/api/v1`` and refresh
themselves (sdbridge.js). Every value is HTML-escaped: labels come from backends and
registrations and are untrusted; secrets are masked (:mod:`sdbridge.masking`).
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from .. import __version__
from ..daemon import Daemon
from ..durations import format_duration
from ..errors import SdbridgeError
from ..job import Job
from ..masking import mask_config, mask_text
from ..relabel import RelabelConfig
from .keys import DAEMON_KEY, SD_CLIENTS_KEY, TARGET_INDEX_KEY
from .registryview import REGISTRY_VIEW_KEY, RegistryPage, RegistryView
from .sdview import DISCOVERY_VIEW_KEY, DiscoveryPage, DiscoveryView, Row, Show
from .status import (
    DEFAULT_PER_PAGE,
    TargetPage,
    config_status,
    int_param,
    job_summary,
)

PER_PAGE_CHOICES = (50, 100, 250, 500, 1000)
REFRESH_SECONDS = 5  # how often a page fetches itself again (sdbridge.js)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _watching(mechanisms: list[dict[str, Any]]) -> float | None:
    """When every mechanism is a healthy watch: since when all have been; else None.

    An idle watch is current, not stalled: its last update may be hours old.
    """
    since: list[float | None] = [m.get("healthy_since") for m in mechanisms]
    healthy = all(m.get("watches") and not m["last_error"] and m["synced"] for m in mechanisms)
    if not mechanisms or not healthy or None in since:
        return None
    return max(t for t in since if t is not None)


def _last_sync(mechanisms: list[dict[str, Any]], last_sync: float | None, now: float) -> str:
    """``watching since ...`` for healthy watches, else how long ago the last sync was."""
    since = _watching(mechanisms)
    if since is None:
        return _ago(last_sync, now)
    iso = _e(_iso(since))
    return f'watching since <time datetime="{iso}" title="{iso}">{iso}</time>'


def _relative(seconds: int) -> str:
    """``42s``, ``5m``, ``3h`` or ``2d`` (sdbridge.js counts the same way)."""
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _ago(timestamp: float | None, now: float) -> str:
    """``3s ago``; ``data-ago`` lets the page's script keep counting between refreshes."""
    if not timestamp:
        return '<span class="muted">never</span>'
    text = _relative(max(0, int(now - timestamp))) + " ago"
    iso = _e(_iso(timestamp))
    return f'<time datetime="{iso}" title="{iso}" data-ago="{timestamp:.3f}">{text}</time>'


def _until(timestamp: float, now: float) -> str:
    """``in 25s`` (or ``expired``), counted down by the page's script."""
    seconds = int(timestamp - now)
    text = f"in {_relative(seconds)}" if seconds > 0 else "expired"
    iso = _e(_iso(timestamp))
    return f'<time datetime="{iso}" title="{iso}" data-until="{timestamp:.3f}">{text}</time>'


def _count(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:,.0f}"
    return "?"


def _badge(state: str) -> str:
    return f'<span class="badge state-{_e(state)}">{_e(state)}</span>'


def _page(title: str, body: str, daemon: Daemon) -> web.Response:
    """A whole page around ``body``.

    Elements with an ``id`` and ``data-live`` are swapped for their fresh copies every
    ``REFRESH_SECONDS`` by sdbridge.js, which fetches the same URL again; ``data-now``
    (the server's clock) lets it count ``data-ago``/``data-until`` times in between.
    """
    waiting = [name for name, job in daemon.jobs.items() if job.snapshot is None]
    readiness = (
        '<span class="badge state-syncing" id="readiness" data-live '
        f'title="waiting for the first sync of: {_e(", ".join(waiting))}">not ready</span>'
        if waiting
        else '<span class="badge state-ok" id="readiness" data-live>ready</span>'
    )
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)} · sdbridge</title>
<link rel="stylesheet" href="/static/sdbridge.css">
</head><body data-now="{time.time():.3f}" data-refresh="{REFRESH_SECONDS}">
<header><a class="brand" href="/">sdbridge</a>
<nav><a href="/">Jobs</a><a href="/registry">Registry</a><a href="/metrics">Metrics</a>\
<a href="/api/v1/jobs">API</a></nav>
<label class="live" id="live-label" title="Refresh this page every {REFRESH_SECONDS}s">\
<input type="checkbox" id="live" checked> live</label>
{readiness}<span class="version">v{_e(__version__)}</span></header>
<main>{body}</main>
<script src="/static/sdbridge.js" defer></script>
</body></html>"""
    return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})


def _config_banner(daemon: Daemon, now: float) -> str:
    config = config_status(daemon)
    if config["last_reload_error"]:
        return (
            '<div class="banner error" id="reload-error"><strong>Config reload failed</strong>; '
            "the previous config keeps running.<pre>"
            f"{_e(config['last_reload_error'])}</pre></div>"
        )
    where = f" from <code>{_e(config['path'])}</code>" if config["path"] else ""
    return f'<p class="muted">Config loaded{where} {_ago(config["last_reload"], now)}.</p>'


async def index(request: web.Request) -> web.Response:
    """The jobs overview."""
    daemon = request.app[DAEMON_KEY]
    now = time.time()
    rows = []
    for job in daemon.jobs.values():
        s = job_summary(job)
        mechanisms = " ".join(
            f'<span class="mech {"up" if not m["last_error"] else "down"}" '
            f'title="{_e(m["last_error"] or "ok")}">{_e(m["name"])}[{m["index"]}]</span>'
            for m in s["mechanisms"]
        )
        errors = "".join(f"<li>{_e(err)}</li>" for err in s["errors"])
        rows.append(
            f'<tr data-job="{_e(job.name)}">'
            f'<td><a href="/jobs/{quote(job.name)}">{_e(job.name)}</a></td>'
            f"<td>{_badge(s['state'])}</td>"
            f'<td class="num">{s["targets"]:,}</td>'
            f"<td>{mechanisms}</td>"
            f"<td>{_last_sync(s['mechanisms'], s['last_sync'], now)}</td>"
            f'<td class="errors">{f"<ul>{errors}</ul>" if errors else ""}</td>'
            "</tr>"
        )
    table = (
        '<table class="grid" id="jobs"><thead><tr><th>Job</th><th>State</th>'
        '<th class="num">Targets</th><th>Mechanisms</th><th>Last sync</th><th>Errors</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        if rows
        else '<p class="muted">No jobs configured.</p>'
    )
    body = f'<h1>Jobs</h1><div id="jobs-live" data-live>{_config_banner(daemon, now)}{table}</div>'
    return _page("Jobs", body, daemon)


def _mechanisms_table(summary: dict[str, Any], now: float) -> str:
    rows = []
    for m in summary["mechanisms"]:
        state = "failing" if m["last_error"] else ("ok" if m["synced"] else "syncing")
        config = json.dumps(m["config"], indent=2, sort_keys=True)
        rows.append(
            "<tr>"
            f"<td>{_e(m['name'])}_sd_configs[{m['index']}]</td>"
            f"<td>{_badge(state)}</td>"
            f"<td>{_last_sync([m], m['last_success'], now)}</td>"
            f'<td class="num">{m["refreshes"]:,}</td>'
            f'<td class="num">{m["failures"]:,}</td>'
            f'<td class="errors">{_e(m["last_error"] or "")}</td>'
            f"<td><details><summary>config</summary><pre>{_e(config)}</pre></details></td>"
            "</tr>"
        )
    return (
        '<table class="grid" id="mechanisms"><thead><tr><th>Mechanism</th><th>State</th>'
        '<th>Last success</th><th class="num">Refreshes</th><th class="num">Failures</th>'
        f"<th>Last error</th><th></th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _clients_section(job: str, clients: list[dict[str, Any]], now: float) -> str:
    if not clients:
        return (
            f'<p class="muted" id="sd-clients">Nobody has polled <code>/sd/{_e(job)}</code> '
            "since sdbridge started.</p>"
        )
    rows = []
    for c in clients:
        interval = c["refresh_interval_seconds"]
        rows.append(
            f"<tr><td><code>{_e(c['address'])}</code></td><td>{_e(c['user_agent'])}</td>"
            f'<td class="num">{f"{interval:g}s" if interval is not None else ""}</td>'
            f"<td>{_ago(c['last_seen'], now)}</td>"
            f'<td class="num">{_e(c["last_status"])}</td></tr>'
        )
    return (
        '<table class="grid" id="sd-clients"><thead><tr><th>Polled by</th><th>User agent</th>'
        '<th class="num">Refresh interval</th><th>Last poll</th><th class="num">Status</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _link(job: str, query: str, page: int, per_page: int) -> str:
    params: dict[str, str | int] = {"page": page, "per_page": per_page}
    if query:
        params = {"q": query, **params}
    return f"/jobs/{quote(job)}?{urlencode(params)}"


def _pager(link_to: Callable[[int], str], page: int, pages: int) -> str:
    def link(label: str, to: int, rel: str) -> str:
        if to < 1 or to > pages or to == page:
            return f'<span class="disabled">{label}</span>'
        return f'<a rel="{rel}" href="{_e(link_to(to))}">{label}</a>'

    return (
        '<nav class="pager">'
        f"{link('&laquo; First', 1, 'first')}{link('&lsaquo; Prev', page - 1, 'prev')}"
        f'<span class="current">page {page:,} of {pages:,}</span>'
        f"{link('Next &rsaquo;', page + 1, 'next')}{link('Last &raquo;', pages, 'last')}</nav>"
    )


def _chips(labels: Mapping[str, str], *, skip_address: bool = False) -> str:
    return " ".join(
        f'<span class="label"><span class="k">{_e(k)}</span>=<span class="v">{_e(v)}</span></span>'
        for k, v in labels.items()
        if not (skip_address and k == "__address__")
    )


def _per_page_options(selected: int) -> str:
    return "".join(
        f'<option value="{n}"{" selected" if n == selected else ""}>{n} per page</option>'
        for n in PER_PAGE_CHOICES
    )


def _targets_section(job: str, query: str, p: TargetPage, synced: bool) -> str:
    options = _per_page_options(p.per_page)
    form = (
        f'<form id="filter" method="get" action="/jobs/{quote(job)}" role="search">'
        f'<input type="search" name="q" id="filter-input" value="{_e(query)}" '
        'placeholder="Filter targets: words that must all appear in name=value, '
        'e.g. env=prod 10.0.0." autocomplete="off" aria-label="Filter targets">'
        f'<select name="per_page" aria-label="Targets per page">{options}</select>'
        '<button type="submit">Filter</button></form>'
    )
    if not synced:
        return (
            f'<h2>Targets</h2>{form}<div id="targets-live" data-live>'
            '<p class="muted">No targets yet: the job has not synced.</p></div>'
        )
    first = (p.page - 1) * p.per_page + 1 if p.matched else 0
    last = min(p.page * p.per_page, p.matched)
    matched = f" matching <q>{_e(query)}</q>" if query else ""
    count = (
        f'<p class="count" id="target-count">Showing {first:,}&ndash;{last:,} of '
        f"<strong>{p.matched:,}</strong> target(s){matched} (total {p.total:,}).</p>"
    )
    rows = []
    for n, labels in enumerate(p.items, start=first):
        chips = _chips(labels, skip_address=True)
        rows.append(
            f'<tr><td class="num muted">{n:,}</td>'
            f'<td class="addr">{_e(labels["__address__"])}</td><td class="labels">{chips}</td></tr>'
        )
    table = (
        '<table class="grid filterable" id="targets"><thead><tr><th class="num idx">#</th>'
        '<th class="addr-col">Address</th>'
        f"<th>Labels</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    pager = _pager(lambda n: _link(job, query, n, p.per_page), p.page, p.pages)
    live = f'<div id="targets-live" data-live>{count}{pager}{table}{pager}</div>'
    return f"<h2>Targets</h2>{form}{live}"


def _no_such_job(daemon: Daemon) -> web.Response:
    body = '<h1>No such job</h1><p><a href="/">Back to the jobs</a></p>'
    response = _page("No such job", body, daemon)
    response.set_status(404)
    return response


async def job_page(request: web.Request) -> web.Response:
    """One job: its mechanisms, errors and targets."""
    daemon = request.app[DAEMON_KEY]
    name = request.match_info["job"]
    job = daemon.jobs.get(name)
    if job is None:
        return _no_such_job(daemon)
    now = time.time()
    s = job_summary(job)
    clients = request.app[SD_CLIENTS_KEY].clients(name)
    query = request.query.get("q", "")[:500]
    page = request.app[TARGET_INDEX_KEY].page(
        name,
        job.snapshot,
        query,
        int_param(request.query.get("page"), 1),
        int_param(request.query.get("per_page"), DEFAULT_PER_PAGE),
    )
    errors = "".join(f"<li>{_e(err)}</li>" for err in s["errors"])
    error_box = (
        f'<div class="banner error" id="job-errors"><ul>{errors}</ul></div>' if errors else ""
    )
    guard = job.guard.status()
    guard_box = (
        '<div class="banner warn" id="guard-holding">The mass-deletion guard holds the '
        f"previous {_count(guard.held_previous)} target(s) back from an update to "
        f"{_count(guard.held_proposed)}; it is published after "
        f"{_count(guard.confirmations)} confirming syncs or "
        f"{_count(guard.seconds_until_release)}s.</div>"
        if guard.holding
        else ""
    )
    outputs = "".join(
        f"<div><dt>{_e(o.get('name', 'output'))}</dt><dd><code>{_e(o.get('path', ''))}</code>"
        "</dd></div>"
        for o in s["outputs"]
    )
    facts = (
        '<dl class="facts">'
        f"<div><dt>State</dt><dd>{_badge(s['state'])}</dd></div>"
        f'<div><dt>Targets</dt><dd id="target-total">{s["targets"]:,}</dd></div>'
        f"<div><dt>Last sync</dt><dd>{_last_sync(s['mechanisms'], s['last_sync'], now)}</dd></div>"
        f"<div><dt>Last publish</dt><dd>{_ago(s['last_publish'], now)}</dd></div>"
        f'<div><dt>http_sd</dt><dd><a href="/sd/{quote(name)}"><code>/sd/{_e(name)}</code></a>'
        f"</dd></div>{outputs}"
        f'<div><dt>Relabeling</dt><dd><a id="sd-link" href="{_sd_path(name)}">'
        "service discovery: labels before and after</a></dd></div></dl>"
    )
    body = (
        f'<p class="crumbs"><a href="/">Jobs</a> &rsaquo;</p><h1>{_e(name)}</h1>'
        f'<div id="job-live" data-live>{error_box}{guard_box}{facts}'
        f"<h2>Mechanisms</h2>{_mechanisms_table(s, now)}"
        f"<h2>http_sd clients</h2>{_clients_section(name, clients, now)}</div>"
        f"{_targets_section(name, query, page, job.snapshot is not None)}"
    )
    return _page(name, body, daemon)


def _sd_path(job: str) -> str:
    return f"/jobs/{quote(job, safe='')}/service-discovery"


def _sd_link(job: str, query: str, show: Show, page: int, per_page: int) -> str:
    params: dict[str, str | int] = {"show": show.value, "page": page, "per_page": per_page}
    if query:
        params = {"q": query, **params}
    return f"{_sd_path(job)}?{urlencode(params)}"


def _rule_text(config: RelabelConfig) -> str:
    """``action: drop, source_labels: ["env"], regex: "dev"``: what a rule says."""
    fields = mask_config(config.model_dump(mode="json", exclude_defaults=True))
    fields = {"action": config.action.value, **fields}
    return ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items())


def _sd_after(row: Row, rules: list[RelabelConfig]) -> str:
    if row.after is not None:
        return f'<td class="labels">{_chips(row.after)}</td>'
    if row.dropped_by is not None:
        index = row.dropped_by
        return (
            '<td class="dropped-by">Dropped by '
            f'<a href="#rule-{index}"><code>relabel_configs[{index}]</code></a>'
            f"<br><code>{_e(_rule_text(rules[index]))}</code></td>"
        )
    return f'<td class="dropped-by">Not published: {_e(row.problem or "")}</td>'


def _sd_rules(rules: list[RelabelConfig]) -> str:
    if not rules:
        return ""
    items = "".join(
        f'<li id="rule-{i}" value="{i}"><code>{_e(_rule_text(rule))}</code></li>'
        for i, rule in enumerate(rules)
    )
    return (
        f'<details id="relabel-rules" open><summary>relabel_configs ({len(rules)})</summary>'
        f'<ol start="0">{items}</ol></details>'
    )


def _sd_table(job: Job, query: str, show: Show, p: DiscoveryPage) -> str:
    rules = list(job.config.relabel_configs)
    first = (p.page - 1) * p.per_page + 1 if p.matched else 0
    last = min(p.page * p.per_page, p.matched)
    matched = f" matching <q>{_e(query)}</q>" if query else ""
    which = "" if show is Show.ALL else f" {show.value}"
    count = (
        f'<p class="count" id="sd-count">Showing {first:,}&ndash;{last:,} of '
        f"<strong>{p.matched:,}</strong>{which} target(s){matched}.</p>"
    )
    rows = []
    for n, row in enumerate(p.rows, start=first):
        state = "active" if row.after is not None else "dropped"
        rows.append(
            f'<tr class="{state}"><td class="num muted">{n:,}</td>'
            f'<td class="labels">{_chips(row.before)}</td>{_sd_after(row, rules)}</tr>'
        )
    table = (
        '<table class="grid filterable sd" id="sd-targets"><thead><tr>'
        '<th class="num idx">#</th><th>Discovered labels</th><th>Target labels</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    pager = _pager(lambda n: _sd_link(job.name, query, show, n, p.per_page), p.page, p.pages)
    return f"{count}{pager}{table}{pager}"


def _sd_summary(job: Job, query: str, current: Show, p: DiscoveryPage) -> str:
    if not p.relabels:
        note = (
            '<p class="muted" id="sd-summary">This job has no <code>relabel_configs</code>: '
            f"its {p.total:,} target(s) are published as discovered.</p>"
        )
    else:
        limit = job.config.keep_dropped_targets
        kept = (
            f" (the first {p.dropped_kept:,} are kept to show here: "
            f"<code>keep_dropped_targets: {limit:,}</code>)"
            if p.dropped_kept < p.dropped
            else ""
        )
        note = (
            f'<p id="sd-summary">{p.active:,} active target(s); {p.dropped:,} dropped by '
            f"relabeling{kept}.</p>"
        )
    counts = {Show.ALL: p.total, Show.ACTIVE: p.active, Show.DROPPED: p.dropped_kept}
    tabs = "".join(
        f'<a class="tab{" current" if show is current else ""}" id="show-{show.value}" '
        f'href="{_e(_sd_link(job.name, query, show, 1, p.per_page))}">'
        f"{show.value.capitalize()} ({counts[show]:,})</a>"
        for show in Show
    )
    return f'{note}<nav class="tabs">{tabs}</nav>'


async def discovery_page(request: web.Request) -> web.Response:
    """A job's targets before and after relabeling, as Prometheus's /service-discovery."""
    daemon = request.app[DAEMON_KEY]
    name = request.match_info["job"]
    job = daemon.jobs.get(name)
    if job is None:
        return _no_such_job(daemon)
    query = request.query.get("q", "")[:500]
    try:
        show = Show(request.query.get("show", Show.ALL.value))
    except ValueError:
        show = Show.ALL
    p = request.app[DISCOVERY_VIEW_KEY].page(
        job,
        query,
        show,
        int_param(request.query.get("page"), 1),
        int_param(request.query.get("per_page"), DEFAULT_PER_PAGE),
    )
    form = (
        f'<form id="filter" method="get" action="{_sd_path(name)}" role="search">'
        f'<input type="search" name="q" id="filter-input" value="{_e(query)}" '
        'placeholder="Filter: words that must all appear in name=value, before or after '
        'relabeling, e.g. __meta_consul_service=api" autocomplete="off" aria-label="Filter targets">'
        f'<input type="hidden" name="show" value="{_e(show.value)}">'
        f'<select name="per_page" aria-label="Targets per page">{_per_page_options(p.per_page)}'
        '</select><button type="submit">Filter</button></form>'
    )
    waiting = (
        '<p class="muted">No targets yet: the job has not synced.</p>'
        if job.snapshot is None
        else ""
    )
    body = (
        f'<p class="crumbs"><a href="/">Jobs</a> &rsaquo; <a href="/jobs/{quote(name)}">'
        f"{_e(name)}</a> &rsaquo;</p><h1>Service discovery: {_e(name)}</h1>"
        f'<div id="sd-live-summary" data-live>{_sd_summary(job, query, show, p)}{waiting}</div>'
        f"{_sd_rules(list(job.config.relabel_configs))}{form}"
        f'<div id="sd-live" data-live>{_sd_table(job, query, show, p)}</div>'
    )
    return _page(f"{name} service discovery", body, daemon)


def _registry_link(query: str, page: int, per_page: int) -> str:
    params: dict[str, str | int] = {"page": page, "per_page": per_page}
    if query:
        params = {"q": query, **params}
    return f"/registry?{urlencode(params)}"


def _registry_table(query: str, p: RegistryPage, now: float) -> str:
    first = (p.page - 1) * p.per_page + 1 if p.matched else 0
    last = min(p.page * p.per_page, p.matched)
    matched = f" matching <q>{_e(query)}</q>" if query else ""
    count = (
        f'<p class="count" id="registry-count">Showing {first:,}&ndash;{last:,} of '
        f"<strong>{p.matched:,}</strong> instance(s){matched} (total {p.total:,} in "
        f"{p.services:,} service(s)).</p>"
    )
    rows = [
        f'<tr><td class="num muted">{n:,}</td><td>{_e(i.service)}</td>'
        f'<td class="addr">{_e(i.instance)}</td><td><code>{_e(i.address)}</code></td>'
        f'<td class="labels">{_chips(i.labels)}</td>'
        f'<td class="num">{_e(format_duration(i.ttl))}</td>'
        f'<td class="expiry">{_until(i.expires_at, now)}</td>'
        f"<td>{_ago(i.registered_at, now)}</td></tr>"
        for n, i in enumerate(p.items, start=first)
    ]
    table = (
        '<table class="grid filterable" id="registry"><thead><tr><th class="num idx">#</th>'
        "<th>Service</th><th>Instance</th><th>Address</th><th>Labels</th>"
        '<th class="num">TTL</th><th>Expires</th><th>Registered</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )
    pager = _pager(lambda n: _registry_link(query, n, p.per_page), p.page, p.pages)
    return f"{count}{pager}{table}{pager}"


async def registry_page(request: web.Request) -> web.Response:
    """Every instance in sdbridge's built-in registry, filtered and paginated."""
    daemon = request.app[DAEMON_KEY]
    now = time.time()
    query = request.query.get("q", "")[:500]
    page = int_param(request.query.get("page"), 1)
    per_page = int_param(request.query.get("per_page"), DEFAULT_PER_PAGE)
    form = (
        '<form id="filter" method="get" action="/registry" role="search">'
        f'<input type="search" name="q" id="filter-input" value="{_e(query)}" '
        'placeholder="Filter instances: words that must all appear in name=value, '
        'e.g. service=api env=prod" autocomplete="off" aria-label="Filter instances">'
        f'<select name="per_page" aria-label="Instances per page">{_per_page_options(per_page)}'
        '</select><button type="submit">Filter</button></form>'
    )
    try:
        store = await daemon.registry_store.get(daemon.config.global_.data_dir)
    except SdbridgeError as exc:
        live = (
            '<div class="banner error" id="registry-error">The registry store is unavailable: '
            f"{_e(mask_text(str(exc)))}</div>"
        )
    else:
        p = request.app[REGISTRY_VIEW_KEY].page(store.instances(), query, page, per_page)
        live = _registry_table(query, p, now)
    body = (
        "<h1>Registry</h1>"
        '<p class="muted">Instances registered with <code>sdbridge register</code> or '
        "<code>PUT /api/v1/registry/&lt;service&gt;/&lt;instance&gt;</code>; an instance "
        "that misses its heartbeat for its TTL expires.</p>"
        f'{form}<div id="registry-live" data-live>{live}</div>'
    )
    return _page("Registry", body, daemon)


def add_routes(app: web.Application) -> None:
    """Mount the UI pages and their static files on ``app``."""
    from pathlib import Path

    app.router.add_get("/", index)
    app.router.add_get("/jobs/{job}", job_page)
    app.router.add_get("/jobs/{job}/service-discovery", discovery_page)
    app.router.add_get("/registry", registry_page)
    app[REGISTRY_VIEW_KEY] = RegistryView()
    view = app[DISCOVERY_VIEW_KEY] = DiscoveryView()
    app[DAEMON_KEY].on_jobs_changed.append(lambda d: view.retain(set(d.jobs)))
    app.router.add_static("/static", Path(__file__).parent / "static")
