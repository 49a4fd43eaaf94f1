"""kazoo's private internals that zookeeper/_kazoo_ext.py builds on are still there.

``addWatch`` and ``multiRead`` go through kazoo's request path and watch-event reader,
neither of which is public API. A kazoo release that changes them must fail here, loudly
and by name, not degrade a running sdbridge in silence. When one does, re-check
_kazoo_ext.py against that release and move pyproject.toml's kazoo bound.
"""

from __future__ import annotations

import inspect
import struct
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kazoo.version
from kazoo.client import KazooClient
from kazoo.exceptions import EXCEPTIONS, NoNodeError, UnimplementedError
from kazoo.protocol import connection, serialization
from kazoo.protocol.connection import ConnectionHandler
from kazoo.protocol.states import ZnodeStat

from sdbridge.discovery.zookeeper import _kazoo_ext
from sdbridge.discovery.zookeeper._kazoo_ext import (
    AddWatch,
    MultiRead,
    has_private_api,
    tap_watch_events,
)

KAZOO = kazoo.version.__version__


def changed(what: str) -> str:
    return (
        f"kazoo {KAZOO} changed {what}; sdbridge.discovery.zookeeper._kazoo_ext relies on "
        "it: re-check that module against this kazoo release, then move the kazoo bound "
        "in pyproject.toml"
    )


def parameters(function: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(function).parameters)


def source(function: Callable[..., Any]) -> str:
    return inspect.getsource(function)


def test_the_installed_kazoo_is_one_this_module_was_checked_against() -> None:
    # This file passed (and tests/integration/test_zookeeper*.py with it) on each of these.
    tested = {(2, 10), (2, 11)}
    bound = "kazoo>=2.10,<2.12"
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert bound in pyproject["project"]["dependencies"], (
        f"pyproject.toml no longer requires {bound!r}: update `tested` here to match"
    )
    major, minor = (int(part) for part in KAZOO.split(".")[:2])
    assert (major, minor) in tested, changed(f"its version (tested: {bound})")


def test_client_call_queues_a_request_object() -> None:
    assert callable(getattr(KazooClient, "_call", None)), changed("KazooClient._call (gone)")
    assert parameters(KazooClient._call) == ["self", "request", "async_object"], changed(
        "the signature of KazooClient._call"
    )
    assert "self._queue.append((request, async_object))" in source(KazooClient._call), changed(
        "how KazooClient._call queues a request"
    )


def test_the_connection_sends_type_and_body_and_answers_with_deserialize() -> None:
    submit = source(ConnectionHandler._submit)
    assert "int_struct.pack(request.type)" in submit, changed("how a request's type is sent")
    assert "request.serialize()" in submit, changed("how a request's body is sent")
    read = source(ConnectionHandler._read_response)
    assert "request.deserialize(buffer, offset)" in read, changed("how a reply is read")
    assert "EXCEPTIONS[header.err]()" in read, changed("how an error reply is raised")


def test_watch_events_go_through_an_overridable_reader() -> None:
    assert parameters(ConnectionHandler._read_watch_event) == ["self", "buffer", "offset"], changed(
        "the signature of ConnectionHandler._read_watch_event"
    )
    assert connection.WATCH_XID == -1, changed("the xid of watch events")
    assert "self._read_watch_event(buffer, offset)" in source(ConnectionHandler._read_socket), (
        changed("how ConnectionHandler._read_socket reads a watch event")
    )
    assert (connection.CREATED_EVENT, connection.DELETED_EVENT, connection.CHANGED_EVENT) == (
        _kazoo_ext.NODE_CREATED,
        _kazoo_ext.NODE_DELETED,
        _kazoo_ext.NODE_DATA_CHANGED,
    ), changed("the event type numbers")


def test_a_client_has_the_private_api_and_the_tap_sees_every_event() -> None:
    client = KazooClient(hosts="127.0.0.1:1")  # never started: no connection is made
    assert has_private_api(client), changed("KazooClient._call or _connection._read_watch_event")
    seen: list[tuple[int, str]] = []
    tap_watch_events(client, lambda event_type, path: seen.append((event_type, path)))
    path = b"/a/b"
    event = struct.pack("!ii", _kazoo_ext.NODE_DATA_CHANGED, 3) + struct.pack("!i", len(path))
    client._connection._read_watch_event(event + path, 0)
    assert seen == [(_kazoo_ext.NODE_DATA_CHANGED, "/a/b")], changed("Watch.deserialize")


def test_the_wire_helpers_keep_their_formats() -> None:
    formats = {
        "int_struct": "!i",
        "multiheader_struct": "!iBi",
        "stat_struct": "!qqqqiiiqiiq",
    }
    for name, fmt in formats.items():
        assert getattr(serialization, name).format == fmt, changed(f"serialization.{name}")
    assert serialization.MultiHeader._fields == ("type", "done", "err"), changed("MultiHeader")
    assert len(ZnodeStat._fields) == 11, changed("ZnodeStat")
    assert serialization.write_string("/x") == b"\x00\x00\x00\x02/x", changed("write_string")
    assert serialization.read_string(b"\x00\x00\x00\x02/x", 0) == ("/x", 6), changed("read_string")
    assert serialization.read_buffer(b"\x00\x00\x00\x01z", 0) == (b"z", 5), changed("read_buffer")
    assert EXCEPTIONS[-101] is NoNodeError, changed("EXCEPTIONS (NoNodeError)")
    assert EXCEPTIONS[-6] is UnimplementedError, changed("EXCEPTIONS (UnimplementedError)")


def test_add_watch_is_the_addwatch_request_of_the_zookeeper_protocol() -> None:
    request = AddWatch("/dubbo", _kazoo_ext.PERSISTENT_RECURSIVE)
    assert request.type == 106
    assert bytes(request.serialize()) == b"\x00\x00\x00\x06/dubbo" + b"\x00\x00\x00\x01"
    assert AddWatch.deserialize(b"", 0) is True


def test_multi_read_wire_format() -> None:
    request = MultiRead([(4, "/a"), (8, "/b"), (4, "/gone")]).serialize()
    assert bytes(request) == (
        struct.pack("!iBi", 4, 0, -1)
        + struct.pack("!i", 2)
        + b"/a\x00"
        + struct.pack("!iBi", 8, 0, -1)
        + struct.pack("!i", 2)
        + b"/b\x00"
        + struct.pack("!iBi", 4, 0, -1)
        + struct.pack("!i", 5)
        + b"/gone\x00"
        + struct.pack("!iBi", -1, 1, -1)
    )
    stat = struct.pack("!qqqqiiiqiiq", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    reply = (
        struct.pack("!iBi", 4, 0, 0)
        + struct.pack("!i", 3)
        + b"abc"
        + stat
        + struct.pack("!iBi", 8, 0, 0)
        + struct.pack("!i", 2)
        + struct.pack("!i", 1)
        + b"x"
        + struct.pack("!i", 1)
        + b"y"
        + struct.pack("!iBi", -1, 0, -101)
        + struct.pack("!i", -101)
        + struct.pack("!iBi", -1, 1, -1)
    )
    data, children, error = MultiRead.deserialize(reply, 0)
    assert data[0] == b"abc"
    assert data[1].czxid == 1
    assert children == ["x", "y"]
    assert isinstance(error, NoNodeError)
