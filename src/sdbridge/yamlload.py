"""One YAML loader for every YAML sdbridge reads: the config, the web config, exec's output.

PyYAML keeps the last of two equal keys in a mapping and drops the first without a word,
so a second ``exec_sd_configs:`` in a job silently replaces the first. Prometheus refuses
that (``field ... already set``), and so does :class:`UniqueKeyLoader`: it composes the
document, reports every duplicate with its path and both line numbers, and only then
builds Python objects. Readers that need other scalar rules subclass it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import yaml


def format_location(loc: tuple[int | str, ...]) -> str:
    """``('jobs', 0, 'exec_sd_configs', 0, 'command')`` → ``jobs[0].exec_sd_configs[0].command``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


class YAMLProblem(Exception):
    """The text is not YAML sdbridge accepts; ``messages`` say where, one per problem."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


class DuplicateKeyError(yaml.YAMLError):
    """A mapping holds the same key twice; ``messages`` name each path and both lines."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate mapping keys."""

    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        duplicates = list(_duplicates(node, (), set()))
        if duplicates:
            raise DuplicateKeyError(duplicates)
        return self.construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicates(node: yaml.Node, path: tuple[int | str, ...], seen: set[int]) -> Iterator[str]:
    if id(node) in seen:  # an alias to a node already walked (or to itself)
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicates(item, (*path, index), seen)
    elif isinstance(node, yaml.MappingNode):
        first_line: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                # Keys are compared as written with their resolved tag: 80 and "80" differ.
                ident = (key.tag, key.value)
                line = key.start_mark.line + 1
                if ident in first_line:
                    where = format_location(path)
                    yield (
                        f"{where}: key {key.value!r} appears twice "
                        f"(line {first_line[ident]} and line {line}); keep one"
                    )
                else:
                    first_line[ident] = line
                name: int | str = key.value
            else:
                name = "<key>"
            yield from _duplicates(value, (*path, name), seen)


def load_yaml(text: str, loader: type[UniqueKeyLoader] = UniqueKeyLoader) -> Any:
    """Parse ``text`` with ``loader``; raise YAMLProblem whose messages name lines and paths."""
    try:
        return yaml.load(text, Loader=loader)  # a SafeLoader
    except DuplicateKeyError as exc:
        raise YAMLProblem(exc.messages) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise YAMLProblem([f"invalid YAML: {where}{problem}"]) from None
    except RecursionError:  # PyYAML recurses per nesting level
        raise YAMLProblem(["invalid YAML: nested too deeply"]) from None
    except ValueError:  # an integer longer than Python converts (4300 digits)
        raise YAMLProblem(["invalid YAML: an integer is out of range"]) from None
