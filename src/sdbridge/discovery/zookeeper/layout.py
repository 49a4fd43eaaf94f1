"""What a registry layout is to the watch tree, and what the layouts share.

Each layout (:mod:`.curator`, :mod:`.dubbo`, :mod:`.serverset`) says which znodes under a
base path it reads and how one znode becomes a target; the tree does all the reading.
"""

from __future__ import annotations

from typing import Protocol

from ...errors import InvalidTargetError
from ...model import LabelSet

META = "__meta_zookeeper_"
PATH_LABEL = META + "path"  # the znode of the target (dubbo and curator layouts)


class Layout(Protocol):
    """Which znodes a layout reads, and how a znode becomes a target.

    ``depth`` counts from the base path (0) down; a layout that reads nothing at a depth
    costs no request there.
    """

    def lists_children(self, depth: int) -> bool:
        """Whether the children of a znode at ``depth`` are read."""
        ...

    def descends_into(self, depth: int, name: str) -> bool:
        """Whether the child ``name`` (at ``depth``) belongs to the layout."""
        ...

    def reads_data(self, depth: int) -> bool:
        """Whether the data of a znode at ``depth`` is read."""
        ...

    def parse(self, path: str, depth: int, data: bytes | None) -> LabelSet | None:
        """The target of a znode, None if it is not one; InvalidTargetError if malformed."""
        ...


def integer_field(value: object, what: str, *, allow_none: bool = False) -> int | None:
    """A JSON integer (not a boolean), or None where allowed; else InvalidTargetError."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidTargetError(f"{what} must be an integer, got {value!r}")
    return value
