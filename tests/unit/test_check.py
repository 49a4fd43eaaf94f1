"""``sdbridge check`` passes only what ``run`` starts with, and says everything wrong at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sdbridge.cli import main
from sdbridge.config import load_config
from sdbridge.errors import ConfigError


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(textwrap.dedent(text))
    path.chmod(mode)
    return path


def check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["check", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_check_refuses_what_run_would_stop_at_all_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "list.sh", "#!/bin/sh\necho []\n", mode=0o644)  # not executable
    (tmp_path / "blocker").write_text("a file where a directory must go")
    config = write(
        tmp_path / "sdbridge.yml",
        """\
        registry:
          write_token_file: missing.token
        global:
          data_dir: blocker/data
        jobs:
          - name: a
            exec_sd_configs:
              - command: [./list.sh]
              - command: [no-such-program-sdbridge]
              - command: [./list.sh]
                working_dir: nowhere
            output: {file: blocker/a.json}
          - name: b
            exec_sd_configs: [{command: [/bin/true]}]
            output: {file: out/b.json}
        """,
    )
    status, out, err = check(capsys, str(config), "--web.listen-address", "localhost")
    assert status == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == "sdbridge: invalid configuration:"
    assert sorted(lines[1:]) == sorted(
        [
            f"{config}: registry.write_token_file: {tmp_path}/missing.token: file not found",
            f"{config}: global.data_dir: {tmp_path}/blocker is not a directory, "
            f"so {tmp_path}/blocker/data cannot be created",
            f"{config}: jobs[0].output.file: {tmp_path}/blocker is not a directory",
            f"{config}: jobs[0].exec_sd_configs[0].command: {tmp_path}/list.sh: "
            "not executable (chmod +x it)",
            f"{config}: jobs[0].exec_sd_configs[1].command: "
            "'no-such-program-sdbridge' is not on the PATH",
            f"{config}: jobs[0].exec_sd_configs[2].command: "
            f"{tmp_path}/nowhere/list.sh: no such program",
            f"{config}: jobs[0].exec_sd_configs[2].working_dir: {tmp_path}/nowhere: "
            "no such directory",
            "--web.listen-address: 'localhost' is not host:port (e.g. 127.0.0.1:9099)",
        ]
    )
    # Nothing was created by checking: run creates directories, check only looks.
    assert not (tmp_path / "out").exists()


def test_check_passes_what_run_can_start_with(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "list.sh", "#!/bin/sh\necho '[]'\n", mode=0o755)
    write(tmp_path / "token", "s3cret\n")
    config = write(
        tmp_path / "sdbridge.yml",
        """\
        registry: {write_token_file: token}
        jobs:
          - name: a
            exec_sd_configs: [{command: [./list.sh]}]
            output: {file: out/deeper/a.json}
        """,
    )
    assert check(capsys, str(config), "--check.connect") == (
        0,
        f"{config}: OK (1 job(s), 1 mechanism(s))\na: reached, 0 target(s)\n",
        "",
    )
    assert not (tmp_path / "out").exists()


def test_check_connect_reports_an_unreachable_backend(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "list.sh", "#!/bin/sh\necho down >&2; exit 3\n", mode=0o755)
    config = write(
        tmp_path / "c.yml", "jobs: [{name: a, exec_sd_configs: [{command: [./list.sh]}]}]"
    )
    assert check(capsys, str(config))[0] == 0  # the network is opt-in
    status, _, err = check(capsys, str(config), "--check.connect")
    assert status == 1
    assert "job 'a'" in err
    assert "exited with status 3" in err


def test_check_a_web_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    web = write(tmp_path / "web.yml", "tls_server_config: {cert_file: a.crt}\n")
    status, _, err = check(capsys, "--web.config.file", str(web))
    assert status == 1
    assert (
        f"{web}: tls_server_config.key_file: missing; cert_file and key_file are both required"
        in err
    )
    write(web, "tls_server_config: {cert_file: a.crt, key_file: a.key}\n")
    (tmp_path / "a.key").write_text("x")
    status, _, err = check(capsys, "--web.config.file", str(web))
    assert f"{web}: tls_server_config.cert_file: {tmp_path}/a.crt: file not found" in err
    write(web, "basic_auth_users: {}\n")
    assert check(capsys, "--web.config.file", str(web)) == (0, f"{web}: OK (web config)\n", "")


def test_an_empty_config_warns_in_check_and_fails_run_and_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "empty.yml", "# nothing yet\n")
    status, out, _ = check(capsys, str(config))
    assert status == 0
    assert f"{config}: warning: no jobs" in out
    for command in (["once", "--config.file", str(config)], ["run", "--config.file", str(config)]):
        assert main(command) == 1
        err = capsys.readouterr().err
        assert f"{config}: no jobs; add at least one under jobs:" in err


def test_cross_job_errors_come_with_field_errors(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yml",
        """\
        jobs:
          - {name: a, exec_sd_configs: [{command: [x]}], output: {file: a.json}, extra: 1}
          - {name: a, exec_sd_configs: [{command: [x]}], output: {file: ./a.json}}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.errors == [
        f"{config}: jobs[0].extra: unknown key",
        f"{config}: jobs[1].name: duplicate job name 'a' (also jobs[0])",
        f"{config}: jobs[1].output.file: jobs 'a' and 'a' write the same file {tmp_path}/a.json",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("global: {data_dri: d}", "global.data_dri: unknown key; did you mean 'data_dir'?"),
        (
            "jobs: [{name: a, exec_sd_config: [{command: [x]}]}]",
            "jobs[0].exec_sd_config: unknown key; did you mean 'exec_sd_configs'?",
        ),
        (
            "jobs: [{name: a, exec_sd_configs: [{command: [x], refresh_intervl: 5s}]}]",
            "jobs[0].exec_sd_configs[0].refresh_intervl: unknown key; "
            "did you mean 'refresh_interval'?",
        ),
        ("registy: {}", "registy: unknown key; did you mean 'registry'?"),
        ("zzz: 1", "zzz: unknown key"),
        (
            "jobs: {name: a}",
            "jobs: expected a list (one '- item' per line, or [a, b]), got a mapping",
        ),
        (
            "jobs: [{name: a, exec_sd_configs: [{command: [x]}], guard: {confirmations: many}}]",
            "jobs[0].guard.confirmations: expected a whole number, got 'many'",
        ),
        (
            "jobs: [{name: a, exec_sd_configs: [{command: [x]}], output: {pretty: maybe}}]",
            "jobs[0].output.pretty: expected true or false, got 'maybe'",
        ),
        (
            "global: [1]",
            "global: expected a mapping of key: value lines (or {key: value}), got a list",
        ),
        (
            "jobs: [{name: a, exec_sd_configs: [{command: [x], refresh_interval: }]}]",
            "jobs[0].exec_sd_configs[0].refresh_interval: expected a duration",
        ),
    ],
)
def test_messages_speak_the_operators_language(tmp_path: Path, text: str, message: str) -> None:
    config = write(tmp_path / "c.yml", text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert any(line.startswith(f"{config}: {message}") for line in info.value.errors or []), (
        info.value.errors
    )
    assert "Input should be" not in str(info.value)


def test_a_secret_value_is_not_echoed(tmp_path: Path) -> None:
    config = write(
        tmp_path / "c.yml",
        "jobs: [{name: a, consul_sd_configs: [{server: '127.0.0.1:1', basic_auth: "
        "{username: u, password: [hunter2]}}]}]\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert "basic_auth.password: expected text" in str(info.value)
    assert "hunter2" not in str(info.value)
