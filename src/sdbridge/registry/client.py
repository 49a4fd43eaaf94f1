"""``sdbridge register``: register with a running sdbridge, heartbeat, deregister on exit.

::

    sdbridge register SERVICE ADDRESS [--instance ID] [--label k=v ...] [--ttl 30s]
                     [--url http://127.0.0.1:9099] [--token-file F]

It keeps heartbeating every ttl/3 until SIGINT or SIGTERM, then deregisters. If
sdbridge forgot the instance (it expired, or sdbridge's data was wiped), the next
heartbeat gets a 404 and the client registers again. While sdbridge is unreachable it
keeps retrying; a refused registration (4xx) ends it with exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from ..asyncutil import Backoff, wait_event
from ..defaults import DEFAULT_URL
from ..discovery._http import Authorization, HTTPClient, HTTPClientConfig, Response, body_message
from ..durations import parse_duration
from ..errors import BackendError, SdbridgeError, redact_url
from .config import API_PREFIX as PREFIX

log = logging.getLogger("sdbridge.register")

_TIMEOUT = 10.0


class Refused(SdbridgeError):
    """sdbridge refused the registration (a 4xx other than 404 on heartbeat)."""


def add_parser(commands: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Add the ``register`` subcommand to the CLI's subparsers."""
    parser = commands.add_parser(
        "register",
        parents=parents,
        help="register an address with a running sdbridge and heartbeat until stopped",
        description="Register ADDRESS as an instance of SERVICE with sdbridge's registry, "
        "renew it every ttl/3, and deregister on SIGINT or SIGTERM.",
        epilog="example:\n  sdbridge register myapp 127.0.0.1:8080 --label env=dev --ttl 30s"
        "\n\ndocs: docs/mechanisms/registry.md",
    )
    parser.add_argument("service", metavar="SERVICE", help="the service name, e.g. myapp")
    parser.add_argument("address", metavar="ADDRESS", help="host:port to scrape")
    parser.add_argument("--instance", help="instance id, unique within SERVICE (default: ADDRESS)")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a target label; repeat for more",
    )
    parser.add_argument(
        "--ttl", default="30s", help="time to live without a heartbeat (default 30s)"
    )
    parser.add_argument(
        "--url", default=DEFAULT_URL, help=f"sdbridge's address (default {DEFAULT_URL})"
    )
    parser.add_argument(
        "--token-file", type=Path, help="file holding the registry's write token (bearer)"
    )


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["a=b", "c=d"]`` → ``{"a": "b", "c": "d"}``; raise ValueError on an item without ``=``."""
    labels = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--label {item!r} must look like name=value")
        labels[name] = value
    return labels


class Registration:
    """One instance kept registered with sdbridge."""

    def __init__(
        self,
        url: str,
        service: str,
        instance: str,
        address: str,
        labels: dict[str, str],
        ttl: float,
        token: str | None = None,
        ttl_text: str | None = None,
    ) -> None:
        self.url = f"{url.rstrip('/')}{PREFIX}/{service}/{instance}"
        self.name = f"{service}/{instance}"
        # The ttl as the user wrote it ("100ms"), so sdbridge's answers quote it back so.
        self.body = orjson.dumps({"address": address, "labels": labels, "ttl": ttl_text or ttl})
        self.ttl = ttl
        self.headers = {"Content-Type": "application/json"}
        self.token = token

    def client(self) -> HTTPClient:
        """The HTTP client to sdbridge, sending the write token (if any) as a bearer."""
        options = HTTPClientConfig(
            authorization=Authorization(credentials=SecretStr(self.token))
            if self.token is not None
            else None
        )
        return HTTPClient(options, name=f"sdbridge at {redact_url(self.url)}", timeout=_TIMEOUT)

    async def register(self, http: HTTPClient) -> None:
        """PUT the registration; Refused on a 4xx, BackendError when unreachable or 5xx."""
        self._check(await self._send(http, "PUT", self.url, self.body))

    async def heartbeat(self, http: HTTPClient) -> None:
        """Renew the ttl, registering again if sdbridge no longer knows the instance."""
        answer = await self._send(http, "POST", f"{self.url}/heartbeat")
        if answer.status == 404:
            log.warning("sdbridge forgot %s; registering again", self.name)
            await self.register(http)
            return
        self._check(answer)

    async def deregister(self, http: HTTPClient) -> None:
        """DELETE the registration (a 404 means it is already gone)."""
        answer = await self._send(http, "DELETE", self.url)
        if answer.status != 404:
            self._check(answer)

    async def _send(
        self, http: HTTPClient, method: str, url: str, body: bytes | None = None
    ) -> Response:
        return await http.fetch(method, url, data=body, headers=self.headers, check=False)

    def _check(self, answer: Response) -> None:
        if answer.status < 400:
            return
        message = body_message(answer.body)
        if answer.status < 500:
            raise Refused(f"sdbridge refused {self.name} ({answer.status}): {message}")
        raise BackendError(f"{answer.where}: HTTP {answer.status}: {message}")

    async def keep(self, stop: asyncio.Event) -> None:
        """Register, heartbeat every ttl/3 until ``stop`` is set, then deregister."""
        backoff = Backoff(0.5, max(1.0, self.ttl / 3))
        async with self.client() as http:
            failing = False
            registered = False
            while not stop.is_set():
                try:
                    if registered:
                        await self.heartbeat(http)
                    else:
                        await self.register(http)
                        registered = True
                        log.info("registered %s at %s", self.name, redact_url(self.url))
                except BackendError as exc:
                    if not failing:
                        log.warning(
                            "cannot reach sdbridge at %s, retrying: %s", redact_url(self.url), exc
                        )
                    failing = True
                    await wait_event(stop, backoff.next_delay())
                    continue
                if failing:
                    log.info("reached sdbridge again")
                failing = False
                backoff.reset()
                await wait_event(stop, self.ttl / 3)
            if registered:
                try:
                    await self.deregister(http)
                    log.info("deregistered %s", self.name)
                except (BackendError, Refused) as exc:
                    log.warning(
                        "could not deregister %s (its ttl will expire it): %s", self.name, exc
                    )


async def run_register(args: argparse.Namespace) -> int:
    """Run ``sdbridge register`` until SIGINT or SIGTERM; return the exit status."""
    try:
        labels = parse_labels(args.label)
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        log.error("%s", exc)
        return 2
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            log.error("cannot read --token-file %s: %s", args.token_file, exc)
            return 2
    registration = Registration(
        args.url,
        args.service,
        args.instance or args.address,
        args.address,
        labels,
        ttl,
        token,
        ttl_text=args.ttl,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await registration.keep(stop)
    except Refused as exc:
        log.error("%s", exc)
        return 2
    return 0
