"""Every Python block in docs/ runs, so the docs cannot show code that does not work.

Each page's blocks run in order in one fresh module, as a reader would paste them into
one file; the ``test_*`` functions a page defines are then run too (parametrized ones
with each of their cases). docs/writing-a-mechanism.md builds the ``sdbridge_inventory``
module step by step, so its namespace is importable under that name for its testing
section, and its watch example runs against a scripted backend. ``register`` is
replaced while a page runs, so the examples never touch the real mechanism table.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sdbridge.sdk
from sdbridge.sdk import BackendError, DiscoveryContext, MechanismConfig, TargetGroup

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PLUGIN = REPO / "tests" / "plugins" / "sdbridge-inventory" / "sdbridge_inventory.py"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Pages whose blocks define a module that later blocks import by name.
MODULE_NAMES = {"writing-a-mechanism.md": "sdbridge_inventory"}


def python_blocks(page: Path, *, standalone: bool = False) -> list[tuple[int, str]]:
    """The page's ```python blocks with the line each starts on.

    A block marked ``<!-- standalone -->`` on the line before is a variant, not a next
    step: it is left out, or (``standalone=True``) it is all that is returned.
    """
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        marked = text[: match.start()].rstrip().endswith("<!-- standalone -->")
        if marked == standalone:
            found.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return found


PAGES = sorted(p for p in DOCS.rglob("*.md") if python_blocks(p))


# --- what the watch example calls "your client": a scripted backend ----------------------


class MyWatchConfig(MechanismConfig):
    url: str


@dataclass
class Event:
    """A host put (address) or deleted (None); or a progress notification."""

    name: str = ""
    address: str | None = None
    is_progress: bool = False


@dataclass
class State:
    revision: int
    hosts: dict[str, str]

    def apply(self, event: Event) -> None:
        name, address = event.name, event.address
        if address is None:
            self.hosts.pop(name, None)
        else:
            self.hosts[name] = address
        self.revision += 1


@dataclass
class Backend:
    """Each connection lists ``hosts``, replays ``events``, then breaks or blocks."""

    hosts: dict[str, str]
    events: list[Event]
    connections: int = 0
    breaks: int = 1  # the first connections end with an error, later ones stay open
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[Backend.Connection]:
        self.connections += 1
        yield Backend.Connection(self, self.connections <= self.breaks)

    @dataclass
    class Connection:
        backend: Backend
        breaks: bool

        async def list_all(self) -> State:
            return State(revision=1, hosts=dict(self.backend.hosts))

        async def watch(self, from_revision: int) -> AsyncIterator[Event]:
            for event in self.backend.events:
                if not event.is_progress:
                    State(0, self.backend.hosts).apply(event)
                yield event
            self.backend.events = []
            if self.breaks:
                raise BackendError("connection lost")
            await asyncio.Event().wait()  # an open, quiet watch


def to_groups(state: State) -> list[TargetGroup]:
    return [
        TargetGroup(source=name, targets=({"__address__": address},), labels={})
        for name, address in sorted(state.hosts.items())
    ]


# --- running a page -------------------------------------------------------------------------


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> dict[str, type]:
    """Mechanisms the page registers, by name; the real table is left alone."""
    found: dict[str, type] = {}

    def register(name: str, config: type) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            found[name] = cls
            return cls

        return decorate

    monkeypatch.setattr(sdbridge.sdk, "register", register)
    return found


def run_page(page: Path, namespace: dict[str, Any]) -> types.ModuleType:
    name = MODULE_NAMES.get(page.name, "docs_" + re.sub(r"\W", "_", page.stem))
    module = types.ModuleType(name)
    module.__dict__.update(namespace)
    sys.modules[name] = module
    for line, code in python_blocks(page):
        exec(compile(code, f"{page}:{line}", "exec"), module.__dict__)
    # Each variant runs on its own, in a copy of what the page defined before it.
    for line, code in python_blocks(page, standalone=True):
        exec(compile(code, f"{page}:{line}", "exec"), dict(module.__dict__))
    return module


def page_tests(module: types.ModuleType) -> Iterator[tuple[str, Callable[..., Any], dict]]:
    """The page's test functions, one call per parametrized case."""
    for name, function in list(vars(module).items()):
        if not (name.startswith("test_") and callable(function)):
            continue
        cases: list[dict[str, Any]] = [{}]
        for mark in getattr(function, "pytestmark", []):
            if mark.name == "parametrize":
                argnames, values = mark.args
                names = (
                    [n.strip() for n in argnames.split(",")]
                    if isinstance(argnames, str)
                    else argnames
                )
                cases = [
                    {**case, **dict(zip(names, v if len(names) > 1 else (v,), strict=True))}
                    for case in cases
                    for v in values
                ]
        for case in cases:
            yield name, function, case


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
async def test_every_python_block_runs(
    page: Path, registered: dict[str, type], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {"MyWatchConfig": MyWatchConfig, "to_groups": to_groups}
    backend = Backend(hosts={"a": "127.0.0.1:1"}, events=[])
    names["connect"] = backend.connect
    module = run_page(page, names)
    try:
        ran = 0
        for _, function, case in page_tests(module):
            result = function(**case)
            if inspect.isawaitable(result):
                await result
            ran += 1
        if page.name == "writing-a-mechanism.md":
            assert ran >= 8  # the testing section's tests, each case
            assert set(registered) == {"inventory", "mywatch"}
    finally:
        sys.modules.pop(module.__name__, None)


async def test_the_watch_example_keeps_the_contract(
    registered: dict[str, type], monkeypatch: pytest.MonkeyPatch
) -> None:
    """First send is the full set, then changes; a progress event is "still current";
    after a broken watch the resync sends only what changed."""
    page = DOCS / "writing-a-mechanism.md"
    backend = Backend(
        hosts={"a": "127.0.0.1:1", "b": "127.0.0.1:2"},
        events=[Event("c", "127.0.0.1:3"), Event(is_progress=True), Event("b", None)],
    )
    module = run_page(
        page, {"MyWatchConfig": MyWatchConfig, "to_groups": to_groups, "connect": backend.connect}
    )
    try:
        # The example's backoff sleep, without the waiting.
        monkeypatch.setattr(module, "asyncio", types.SimpleNamespace(sleep=_no_sleep))
        context = DiscoveryContext(job="test", mechanism="mywatch")
        discoverer = registered["mywatch"](MyWatchConfig(url="x"), context)
        sends: list[list[TargetGroup]] = []
        done = asyncio.Event()

        async def send(groups: list[TargetGroup]) -> None:
            sends.append(groups)
            if backend.connections == 2:  # the resync after the break has been sent
                done.set()

        task = asyncio.create_task(discoverer.run(send))
        await asyncio.wait_for(done.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        sys.modules.pop(module.__name__, None)
    sources = [{g.source: len(g.targets) for g in groups} for groups in sends]
    assert sources[0] == {"a": 1, "b": 1}  # the full set first
    assert sources[1:3] == [{"c": 1}, {"b": 0}]  # then only changes; empty removes
    assert sources[3] == {}  # the resync finds nothing new: "synced, nothing changed"
    assert context.status.last_current is not None  # the progress event: still current
    assert context.status.failures == 1  # the broken watch, reported once


async def _no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def test_the_plugin_is_the_documented_code() -> None:
    """tests/plugins/sdbridge-inventory holds steps 1-4 of the page, line for line."""
    plugin = PLUGIN.read_text(encoding="utf-8")
    blocks = python_blocks(DOCS / "writing-a-mechanism.md")[:4]
    for line, code in blocks:
        for text in code.splitlines():
            if text.strip() and not text.startswith(("from ", "import ")):
                assert text in plugin, f"writing-a-mechanism.md:{line}: {text!r} not in {PLUGIN}"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
_RECORD = st.fixed_dictionaries(
    {},
    optional={
        "hostname": _JSON,
        "address": _JSON | st.sampled_from(["127.0.0.1", "::1"]),
        "port": _JSON,
        "datacenter": _JSON,
        "tags": _JSON,
        "metadata": _JSON,
    },
)


def test_any_record_either_becomes_a_group_or_raises_what_refresh_catches(
    registered: dict[str, type],
) -> None:
    module = run_page(
        DOCS / "writing-a-mechanism.md",
        {"MyWatchConfig": MyWatchConfig, "to_groups": to_groups, "connect": None},
    )
    try:

        @settings(max_examples=200, deadline=None)
        @given(_RECORD | _JSON)
        def check(record: object) -> None:
            with contextlib.suppress(module.BAD_RECORD):
                module.host_group(record)

        check()
    finally:
        sys.modules.pop(module.__name__, None)
