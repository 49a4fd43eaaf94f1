"""Log formats: logfmt (the default) and JSON lines."""

from __future__ import annotations

import logging

import orjson

from sdbridge.logfmt import JsonFormatter, LogfmtFormatter


def record(msg: str, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("sdbridge.job", logging.WARNING, __file__, 1, msg, None, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_logfmt_quotes_only_what_needs_quoting() -> None:
    line = LogfmtFormatter().format(
        record('a "quoted" msg\nnext', job="web", index=0, path="a=b", empty="")
    )
    assert line.startswith("ts=")
    fields = line.split(" level=", 1)[1]
    assert fields == (
        'warning logger=sdbridge.job msg="a \\"quoted\\" msg\\nnext" job=web index=0 '
        'path="a=b" empty=""'
    )
    assert "\n" not in line


def test_logfmt_puts_a_traceback_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = LogfmtFormatter().format(rec)
    assert "\n" not in line
    assert 'err="Traceback' in line
    assert "ValueError: boom" in line


def test_json_lines() -> None:
    line = JsonFormatter().format(record("hello %s", job="web"))
    data = orjson.loads(line)
    assert data["level"] == "warning"
    assert data["logger"] == "sdbridge.job"
    assert data["msg"] == "hello %s"
    assert data["job"] == "web"
    assert data["ts"].endswith("Z")
