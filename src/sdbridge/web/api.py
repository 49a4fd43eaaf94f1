"""``/api/v1``: JSON views of jobs, their mechanisms, errors and targets.

``GET /api/v1/jobs`` lists every job without targets; ``GET /api/v1/jobs/<job>`` adds
one page of targets (``?page=1&per_page=100&q=words``; ``q`` keeps targets whose
``name=value`` pairs contain every word). Answers follow Prometheus's API envelope:
``{"status": "success", "data": ...}`` or ``{"status": "error", "error": ...}``.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .keys import DAEMON_KEY, SD_CLIENTS_KEY, TARGET_INDEX_KEY
from .status import (
    DEFAULT_PER_PAGE,
    TargetIndex,
    config_status,
    int_param,
    job_summary,
)


def _json(data: Any, status: int = 200) -> web.Response:
    body = orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS)
    return web.Response(body=body, status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"status": "error", "error": message}, status)


async def list_jobs(request: web.Request) -> web.Response:
    """Every job's summary and the config's reload status."""
    daemon = request.app[DAEMON_KEY]
    jobs = [job_summary(job) for job in daemon.jobs.values()]
    return _json({"status": "success", "data": {"jobs": jobs, "config": config_status(daemon)}})


async def get_job(request: web.Request) -> web.Response:
    """One job's summary and a page of its targets."""
    daemon = request.app[DAEMON_KEY]
    name = request.match_info["job"]
    job = daemon.jobs.get(name)
    if job is None:
        return _error(404, "no such job")
    index: TargetIndex = request.app[TARGET_INDEX_KEY]
    query = request.query.get("q", "")[:500]
    page = index.page(
        name,
        job.snapshot,
        query,
        int_param(request.query.get("page"), 1),
        int_param(request.query.get("per_page"), DEFAULT_PER_PAGE),
    )
    data = {
        **job_summary(job),
        "http_sd_clients": request.app[SD_CLIENTS_KEY].clients(name),
        "query": query,
        "targets_page": page.as_json(),
    }
    return _json({"status": "success", "data": data})


def add_routes(app: web.Application) -> None:
    """Mount the API on ``app``."""
    app.router.add_get("/api/v1/jobs", list_jobs)
    app.router.add_get("/api/v1/jobs/{job}", get_job)
