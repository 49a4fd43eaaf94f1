"""The CLI explains itself: help for every command and option, a pasteable start banner,
and a port-in-use error that says so."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest
import yaml

from sdbridge.cli import _parser, invoked_as, main
from sdbridge.defaults import banner, default_config

COMMANDS = ["run", "once", "check", "register"]


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("no subcommands")


def test_bare_sdbridge_prints_the_full_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: sdbridge")
    for command in COMMANDS:
        assert f"    {command} " in err
    assert "example:\n  sdbridge run" in err
    assert "docs: docs/quickstart.md" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_a_description_an_example_and_docs(command: str) -> None:
    parser = subparsers(_parser())[command]
    assert parser.description
    assert parser.epilog is not None
    assert parser.epilog.startswith(f"example:\n  sdbridge {command}")
    page = parser.epilog.rsplit("docs: ", 1)[1]
    assert (Path(__file__).resolve().parents[2] / page).is_file(), page
    help_text = parser.format_help()
    assert "example:\n  sdbridge" in help_text  # kept as written, not re-wrapped


def test_every_option_has_help() -> None:
    parser = _parser()
    for owner in [parser, *subparsers(parser).values()]:
        for action in owner._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{owner.prog} {action.option_strings or action.dest}"


def test_the_banner_is_pasteable(tmp_path: Path) -> None:
    config = default_config(tmp_path)
    text = banner(config, "http://0.0.0.0:9100", ".venv/bin/sdbridge")
    assert (
        "  .venv/bin/sdbridge register myapp 127.0.0.1:8080 --label env=dev "
        "--url http://127.0.0.1:9100\n" in text
    )
    # The scrape config parses as YAML and carries the quickstart's service relabel.
    scrape = yaml.safe_load(text.split("under scrape_configs:\n", 1)[1])
    assert [job["relabel_configs"] for job in scrape] == [
        [{"source_labels": ["__meta_registry_service"], "target_label": "service"}]
    ] * 2
    assert scrape[0]["file_sd_configs"] == [{"files": [str(tmp_path / "targets/registry.json")]}]
    assert scrape[1]["http_sd_configs"] == [{"url": "http://127.0.0.1:9100/sd/registry"}]
    default = banner(config, "http://127.0.0.1:9099")
    assert "  sdbridge register myapp 127.0.0.1:8080 --label env=dev\n" in default


def test_invoked_as(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "bin" / "sdbridge"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invoked_as("bin/sdbridge") == "bin/sdbridge"
    assert invoked_as(str(script)) == str(script)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin")
    assert invoked_as(str(script)) == "sdbridge"  # found on the PATH: typed as the bare name
    assert invoked_as("-c") == "sdbridge"
    assert invoked_as("/a dir/sdbridge") == "sdbridge"


def test_port_in_use_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert main(["run", "--web.listen-address", address]) == 1
    err = capsys.readouterr().err
    assert "invalid configuration" not in err
    assert f"sdbridge: cannot listen on {address}: the port is already in use" in err
    assert "--web.listen-address HOST:PORT" in err
