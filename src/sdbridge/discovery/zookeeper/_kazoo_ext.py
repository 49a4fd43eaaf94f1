"""ZooKeeper 3.6+ requests kazoo lacks, built on kazoo's private internals: all of them here.

Why: kazoo (through 2.11) has no ``addWatch`` (python-zk/kazoo#715 is unmerged) and sends only
write transactions as ``multi``, yet a persistent recursive watch saves a read per event
and ``multiRead`` turns a resync's thousands of reads into a few requests. So this module
queues its own request objects through kazoo's request path and sees watch events after
kazoo's reader does. What it relies on, all private to kazoo and unchanged through 2.x:

* ``KazooClient._call(request, async_object)`` queues a request; kazoo's connection
  sends ``int(request.type) + request.serialize()`` and answers the async object with
  ``request.deserialize(buffer, offset)``, or ``EXCEPTIONS[err]()`` on an error reply.
* ``ConnectionHandler._read_watch_event(buffer, offset)``, looked up on the instance, reads
  each watch event (xid -1) with ``Watch.deserialize``.
* ``kazoo.protocol.serialization``'s wire helpers (``MultiHeader``, ``int_struct``,
  ``multiheader_struct``, ``stat_struct``, ``read_buffer``, ``read_string``,
  ``write_string``).

tests/unit/test_zookeeper_kazoo_ext.py checks each of these and names the kazoo version
when one changes; pyproject.toml bounds kazoo to the versions checked. At run time,
:func:`has_private_api` gates both requests: without it sdbridge falls back to one-shot
watches and single reads, as on a server before 3.6.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import EXCEPTIONS
from kazoo.protocol.serialization import (
    MultiHeader,
    Watch,
    int_struct,
    multiheader_struct,
    read_buffer,
    read_string,
    stat_struct,
    write_string,
)
from kazoo.protocol.states import ZnodeStat

# ``addWatch`` (opcode 106, ``AddWatchRequest{path, mode}``). Mode 1 is PERSISTENT_RECURSIVE:
# the watch stays after firing and covers the whole subtree, with NodeCreated, NodeDeleted
# and NodeDataChanged events for every znode under the path (and no NodeChildrenChanged).
ADD_WATCH_OPCODE = 106
PERSISTENT_RECURSIVE = 1
# Event types of the ZooKeeper protocol (Watcher.Event.EventType).
NODE_CREATED, NODE_DELETED, NODE_DATA_CHANGED = 1, 2, 3

# ``multiRead`` (opcode 22): many getData/getChildren in one request, each answered on its
# own (an error for one read does not fail the others).
MULTI_READ_OPCODE = 22
GET_DATA, GET_CHILDREN, ERROR_RESULT = 4, 8, -1


class AddWatch:
    """An ``addWatch`` request in the shape kazoo's connection sends and answers."""

    type = ADD_WATCH_OPCODE

    def __init__(self, path: str, mode: int) -> None:
        self.path = path
        self.mode = mode

    def serialize(self) -> bytearray:
        """The request body: the path, then the mode."""
        body = bytearray(write_string(self.path))
        body.extend(int_struct.pack(self.mode))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        """The reply has no body."""
        return True


class MultiRead:
    """A ``multiRead`` request of (op type, path) reads, none of which sets a watch."""

    type = MULTI_READ_OPCODE

    def __init__(self, ops: list[tuple[int, str]]) -> None:
        self.ops = ops

    def serialize(self) -> bytearray:
        """``MultiOperationRecord``: a header and a request per op, then a done header."""
        body = bytearray()
        for op_type, path in self.ops:
            body.extend(MultiHeader(op_type, False, -1).serialize())
            body.extend(write_string(path))
            body.append(0)  # watch: false
        body.extend(multiheader_struct.pack(-1, True, -1))
        return body

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> list[Any]:
        """``MultiResponse``: (data, stat), a list of children, or the op's exception."""
        results: list[Any] = []
        header, offset = MultiHeader.deserialize(buffer, offset)
        while not header.done:
            if header.type == GET_DATA:
                data, offset = read_buffer(buffer, offset)
                stat = ZnodeStat._make(stat_struct.unpack_from(buffer, offset))
                offset += stat_struct.size
                results.append((data, stat))
            elif header.type == GET_CHILDREN:
                count = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                children = []
                for _ in range(max(count, 0)):
                    child, offset = read_string(buffer, offset)
                    children.append(child)
                results.append(children)
            elif header.type == ERROR_RESULT:
                code = int_struct.unpack_from(buffer, offset)[0]
                offset += int_struct.size
                results.append(EXCEPTIONS[code]())
            else:
                raise ValueError(f"unexpected multiRead result type {header.type}")
            header, offset = MultiHeader.deserialize(buffer, offset)
        return results


def has_private_api(client: Any) -> bool:
    """Whether ``client`` has the kazoo internals this module relies on."""
    connection = getattr(client, "_connection", None)
    return callable(getattr(client, "_call", None)) and callable(
        getattr(connection, "_read_watch_event", None)
    )


def _send(client: KazooClient, request: AddWatch | MultiRead) -> Any:
    result = client.handler.async_result()
    client._call(request, result)
    return result


def multi_read(client: KazooClient, ops: list[tuple[int, str]]) -> Any:
    """Send one ``multiRead`` of ``ops``; return kazoo's async result."""
    return _send(client, MultiRead(ops))


def add_recursive_watch(client: KazooClient, path: str) -> Any:
    """Send ``addWatch(path, PERSISTENT_RECURSIVE)``; return kazoo's async result."""
    return _send(client, AddWatch(path, PERSISTENT_RECURSIVE))


def tap_watch_events(client: KazooClient, sink: Callable[[int, str], None]) -> None:
    """Call ``sink(event type, path)`` in kazoo's thread for every watch event.

    kazoo dispatches an event only to the one-shot watchers it registered itself, so the
    events of a persistent watch would be dropped: see each event after kazoo does.
    """
    connection = client._connection
    original = connection._read_watch_event

    def read_watch_event(buffer: bytes, offset: int) -> Any:
        result = original(buffer, offset)
        event, _ = Watch.deserialize(buffer, offset)
        sink(event.type, event.path)
        return result

    connection._read_watch_event = read_watch_event
