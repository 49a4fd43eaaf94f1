"""The OpenAPI 3.0 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Written by hand next to the handlers it describes (:mod:`.api`, :mod:`.registry_api`),
and checked against them by a property-based test (schemathesis) that sends what the
description allows and what it does not: no answer may be a 5xx, every answer must
match the description, and a refused write must leave the store unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..registry.config import API_PREFIX
from ..registry.instance import INSTANCE_RE, MAX_ADDRESS, MAX_LABELS, SERVICE_RE

PATH = "/api/v1/openapi.json"

_ERROR = {
    "type": "object",
    "required": ["status", "error"],
    "properties": {
        "status": {"type": "string", "enum": ["error"]},
        "errorType": {"type": "string"},
        "error": {"type": "string"},
        "field": {"type": "string"},
    },
}
_HEALTH = {
    "type": "object",
    "required": ["backend", "writable"],
    "properties": {
        "backend": {"type": "string", "enum": ["sqlite", "etcd"]},
        "writable": {"type": "boolean"},
        "instances": {"type": "integer"},
        "invalid_keys": {"type": "integer"},
        "watch_error": {"type": "string"},
    },
}
_UNHEALTHY: dict[str, Any] = {
    "type": "object",
    "required": ["status", "error", "data"],
    "properties": {
        "status": {"type": "string", "enum": ["error"]},
        "errorType": {"type": "string"},
        "error": {"type": "string"},
        "data": _HEALTH,
    },
}
_INSTANCE = {
    "type": "object",
    "required": ["service", "instance", "address", "labels", "ttl", "expires_at"],
    "properties": {
        "service": {"type": "string"},
        "instance": {"type": "string"},
        "address": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "ttl": {"type": "string"},
        "expires_at": {"type": "number"},
        "expires_in": {"type": "number"},
        "registered_at": {"type": "number"},
    },
}
_REGISTRATION = {
    "type": "object",
    "required": ["address"],
    "additionalProperties": False,
    "properties": {
        "address": {"type": "string", "maxLength": MAX_ADDRESS, "example": "127.0.0.1:9100"},
        "labels": {
            "type": "object",
            "maxProperties": MAX_LABELS,
            "additionalProperties": {"type": "string"},
        },
        "ttl": {"type": "string", "example": "30s"},
    },
}


def _success(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["status", "data"],
        "properties": {"status": {"type": "string", "enum": ["success"]}, "data": data},
    }


def _answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "invalid input; `field` names it",
        401: "credentials or a bearer token are missing",
        403: "a wrong token, or a write from an unknown Host or another site",
        404: "not found",
        408: "the body arrived slower than --web.read-timeout",
        413: "the body is larger than 64 KiB",
        429: "too many failed credential checks from this address",
        503: "the store or the token file is unavailable",
    }
    return {str(code): _answer(reasons[code], _ERROR) for code in codes}


_SERVICE = {
    "name": "service",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": SERVICE_RE.pattern},
}
_INSTANCE_ID = {
    "name": "instance",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": INSTANCE_RE.pattern},
}
_JOB = {
    "name": "job",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^[A-Za-z0-9_.-]{1,200}$"},
}
_PAGE = [
    {"name": name, "in": "query", "schema": {"type": "integer", "minimum": 1}}
    for name in ("page", "per_page")
]
_LIST = _answer(
    "registered instances",
    _success(
        {
            "type": "object",
            "required": ["instances"],
            "properties": {"instances": {"type": "array", "items": _INSTANCE}},
        }
    ),
)
_JOB_SUMMARY = {
    "type": "object",
    "required": ["name", "state", "targets", "mechanisms", "outputs", "errors"],
    "properties": {
        "name": {"type": "string"},
        "state": {
            "type": "string",
            "enum": ["syncing", "failing", "degraded", "holding", "stale", "ok"],
        },
        "targets": {"type": "integer"},
        "mechanisms": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object"}},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict)."""
    one = f"{API_PREFIX}/{{service}}/{{instance}}"
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "sdbridge API",
            "version": __version__,
            "description": "Jobs and the built-in registry. Writes without a bearer token "
            "need a Host the server is known by and no cross-site Origin (docs/web.md). "
            "With basic_auth_users set, any path may also answer 401, or 429 after too "
            "many failed checks from one address.",
        },
        "paths": {
            "/api/v1/jobs": {
                "get": {
                    "summary": "every job and the config's reload status",
                    "responses": {
                        "200": _answer(
                            "jobs",
                            _success(
                                {
                                    "type": "object",
                                    "required": ["jobs", "config"],
                                    "properties": {
                                        "jobs": {"type": "array", "items": _JOB_SUMMARY},
                                        "config": {"type": "object"},
                                    },
                                }
                            ),
                        ),
                    },
                }
            },
            "/api/v1/jobs/{job}": {
                "get": {
                    "summary": "one job with a page of its targets",
                    "parameters": [
                        _JOB,
                        {"name": "q", "in": "query", "schema": {"type": "string"}},
                        *_PAGE,
                    ],
                    "responses": {
                        "200": _answer("the job", _success(_JOB_SUMMARY)),
                        **_errors(404),
                    },
                }
            },
            API_PREFIX: {
                "get": {
                    "summary": "every registered instance",
                    "responses": {"200": _LIST, **_errors(503)},
                }
            },
            f"{API_PREFIX}/health": {
                "get": {
                    "summary": "whether the registry's backend commits writes now",
                    "responses": {
                        "200": _answer("writable", _success(_HEALTH)),
                        "503": _answer(
                            "writes cannot be committed; `error` says why",
                            _UNHEALTHY,
                        ),
                    },
                }
            },
            f"{API_PREFIX}/{{service}}": {
                "get": {
                    "summary": "the instances of one service",
                    "parameters": [_SERVICE],
                    "responses": {"200": _LIST, **_errors(400, 503)},
                }
            },
            one: {
                "parameters": [_SERVICE, _INSTANCE_ID],
                "get": {
                    "summary": "one registered instance",
                    "responses": {
                        "200": _answer("the instance", _success(_INSTANCE)),
                        **_errors(400, 404, 503),
                    },
                },
                "put": {
                    "summary": "register or replace an instance",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _REGISTRATION}},
                    },
                    "responses": {
                        "200": _answer("replaced", _success(_INSTANCE)),
                        "201": _answer("registered", _success(_INSTANCE)),
                        **_errors(400, 401, 403, 408, 413, 503),
                    },
                },
                "delete": {
                    "summary": "deregister an instance",
                    "responses": {
                        "200": _answer("deregistered", _success({"type": "object"})),
                        **_errors(400, 401, 403, 404, 503),
                    },
                },
            },
            f"{one}/heartbeat": {
                "parameters": [_SERVICE, _INSTANCE_ID],
                "post": {
                    "summary": "renew an instance's ttl (404: register it again)",
                    "responses": {
                        "200": _answer("renewed", _success(_INSTANCE)),
                        **_errors(400, 401, 403, 404, 503),
                    },
                },
            },
        },
    }


async def serve(_: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``."""
    return web.Response(body=orjson.dumps(document()), content_type="application/json")


def add_routes(app: web.Application) -> None:
    """Serve the description on ``app``."""
    app.router.add_get(PATH, serve)
