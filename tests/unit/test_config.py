"""The config file: shape, path resolution, and every kind of bad input, named by file and path."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sdbridge.config import load_config, parse_config
from sdbridge.discovery.exec import ExecSDConfig
from sdbridge.errors import ConfigError

EXEC = "exec_sd_configs: [{command: [./list.sh]}]"


def write(tmp_path: Path, text: str, name: str = "sdbridge.yml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_a_full_config(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        global:
          data_dir: state
          publish_delay: {{min: 100ms, max: 1s}}
        web:
          listen_address: 127.0.0.1:9099
        jobs:
          - name: web
            {EXEC}
            relabel_configs:
              - source_labels: [env]
                target_label: environment
            guard: {{max_drop_ratio: 0.3, hold_for: 10m}}
            output:
              file: targets/web.yml
              file_mode: "0640"
              pretty: true
        """,
    )
    config = load_config(path)
    assert config.global_.data_dir == tmp_path / "state"
    assert config.global_.publish_delay.min == 0.1
    assert config.global_.publish_delay.max == 1.0
    job = config.jobs[0]
    assert job.output.file == tmp_path / "targets" / "web.yml"
    assert job.output.file_mode == 0o640
    assert job.guard.hold_for == 600.0
    [(name, exec_config)] = job.mechanism_configs()
    assert name == "exec"
    assert isinstance(exec_config, ExecSDConfig)
    assert exec_config.working_dir == tmp_path
    assert exec_config.refresh_interval == 60.0
    assert exec_config.timeout == 30.0


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, f"jobs: [{{name: a, {EXEC}}}]"))
    assert config.global_.publish_delay.min == 0.25
    assert config.global_.publish_delay.max == 2.0
    assert config.global_.data_dir == tmp_path / "data"
    assert config.jobs[0].output.file is None
    assert config.jobs[0].output.file_mode == 0o644


def test_relative_paths_resolve_against_the_config_dir_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc" / "sdbridge"
    conf_dir.mkdir(parents=True)
    write(
        conf_dir,
        """\
        jobs:
          - name: a
            exec_sd_configs:
              - command: [./list.sh]
              - command: [./list.sh]
                working_dir: ../scripts
              - command: [./list.sh]
                working_dir: /opt/x
            output: {file: ../../out/a.json}
        """,
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("etc/sdbridge/sdbridge.yml"))
    job = config.jobs[0]
    assert job.output.file == tmp_path / "out" / "a.json"
    dirs = [c.working_dir for _, c in job.mechanism_configs()]  # type: ignore[attr-defined]
    assert dirs == [conf_dir, tmp_path / "etc" / "scripts", Path("/opt/x")]
    assert config.global_.data_dir == conf_dir / "data"


@pytest.mark.parametrize(
    "mechanism",
    [
        "consul_sd_configs: [{server: 127.0.0.1:8500, scheme: https, tls_config: {ca_file: ca.pem}}]",
        "dockerswarm_sd_configs: [{host: https://127.0.0.1:2376, role: nodes, "
        "tls_config: {ca_file: ca.pem}}]",
        "etcd_sd_configs: [{endpoints: [127.0.0.1:2379], prefix: /x, layout: go-zero, "
        "tls_config: {ca_file: ca.pem}}]",
        "zookeeper_sd_configs: [{servers: [127.0.0.1:2181], paths: [/x], layout: curator, "
        "tls_config: {ca_file: ca.pem}}]",
    ],
)
def test_nested_option_blocks_resolve_their_files(tmp_path: Path, mechanism: str) -> None:
    path = write(tmp_path, f"jobs:\n  - name: a\n    {mechanism}\n")
    ((_, mechanism_config),) = load_config(path).jobs[0].mechanism_configs()
    assert mechanism_config.tls_config.ca_file == tmp_path / "ca.pem"  # type: ignore[attr-defined]


# --- bad input: each error names the file and the path ----------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yml"
    assert errors_of(path) == f"{path}: config file not found"


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs:\n  - name: a\n    exec_sd_configs: [\n  oops: }\n")
    message = errors_of(path)
    assert message.startswith(f"{path}: invalid YAML: line 4, column ")


def test_unknown_key(tmp_path: Path) -> None:
    path = write(
        tmp_path, "jobs:\n  - name: a\n    exec_sd_configs: [{command: [x], comand: [y]}]\n"
    )
    assert errors_of(path) == (
        f"{path}: jobs[0].exec_sd_configs[0].comand: unknown key; did you mean 'command'?"
    )


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "job: []\n")
    assert errors_of(path) == f"{path}: job: unknown key; did you mean 'jobs'?"


def test_unknown_mechanism(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs:\n  - name: a\n    nosuch_sd_configs: [{}]\n    " + EXEC + "\n")
    message = errors_of(path)
    assert message.startswith(f"{path}: jobs[0].nosuch_sd_configs: unknown mechanism (known: ")
    assert "exec_sd_configs" in message


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ("30", "jobs[0].exec_sd_configs[0].refresh_interval"),
        ("30x", "jobs[0].exec_sd_configs[0].refresh_interval"),
        ("1m30", "jobs[0].exec_sd_configs[0].refresh_interval"),
    ],
)
def test_bad_duration(tmp_path: Path, value: str, where: str) -> None:
    path = write(
        tmp_path,
        f"jobs:\n  - name: a\n    exec_sd_configs: [{{command: [x], refresh_interval: {value}}}]\n",
    )
    message = errors_of(path)
    assert message.startswith(f"{path}: {where}: ")
    assert "duration" in message


def test_zero_refresh_interval(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs:\n  - name: a\n    exec_sd_configs: [{command: [x], refresh_interval: 0s}]\n",
    )
    assert errors_of(path) == (
        f"{path}: jobs[0].exec_sd_configs[0].refresh_interval: refresh_interval must be greater than 0"
    )


def test_bad_publish_delay(tmp_path: Path) -> None:
    path = write(tmp_path, "global: {publish_delay: {min: 5s, max: 1s}}\n")
    assert "publish_delay.min must not exceed publish_delay.max" in errors_of(path)


def test_duplicate_job_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        jobs:
          - {{name: a, {EXEC}}}
          - {{name: b, {EXEC}}}
          - {{name: a, {EXEC}}}
        """,
    )
    assert errors_of(path) == f"{path}: jobs[2].name: duplicate job name 'a' (also jobs[0])"


def test_two_jobs_writing_the_same_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
        jobs:
          - {{name: a, {EXEC}, output: {{file: out/x.json}}}}
          - {{name: b, {EXEC}, output: {{file: ./out/../out/x.json}}}}
        """,
    )
    assert errors_of(path) == (
        f"{path}: jobs[1].output.file: jobs 'a' and 'b' write the same file {tmp_path}/out/x.json"
    )


@pytest.mark.parametrize(
    ("job", "where", "message"),
    [
        ("{name: a}", "jobs[0]", "job 'a' has no mechanism; add one of: "),
        ("{name: 'a b', " + EXEC + "}", "jobs[0].name", "job name 'a b' must match"),
        ('{name: "a\\n", ' + EXEC + "}", "jobs[0].name", "job name 'a\\n' must match"),
        ("{" + EXEC + "}", "jobs[0].name", "required key is missing"),
        (
            "{name: a, exec_sd_configs: [{}]}",
            "jobs[0].exec_sd_configs[0].command",
            "required key is missing",
        ),
        (
            "{name: a, exec_sd_configs: [{command: []}]}",
            "jobs[0].exec_sd_configs[0].command",
            "at least 1 item",
        ),
        (
            "{name: a, exec_sd_configs: [{command: x}]}",
            "jobs[0].exec_sd_configs[0].command",
            "expected a list",
        ),
        (
            "{name: a, " + EXEC + ", output: {file: x.txt}}",
            "jobs[0].output.file",
            "must end in .json, .yml or .yaml",
        ),
        (
            "{name: a, " + EXEC + ", output: {file_mode: '0999'}}",
            "jobs[0].output.file_mode",
            "must be octal",
        ),
        (
            "{name: a, " + EXEC + ", guard: {max_drop_ratio: 2}}",
            "jobs[0].guard.max_drop_ratio",
            "less than or equal to 1",
        ),
        (
            "{name: a, " + EXEC + ", relabel_configs: [{action: hashmod, target_label: x}]}",
            "jobs[0].relabel_configs[0]",
            "non-zero modulus",
        ),
    ],
)
def test_invalid_values_name_their_path(tmp_path: Path, job: str, where: str, message: str) -> None:
    path = write(tmp_path, f"jobs:\n  - {job}\n")
    text = errors_of(path)
    assert text.startswith(f"{path}: {where}: "), text
    assert message in text


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "jobs:\n  - {name: a, exec_sd_configs: [{command: [x], timeout: 1x}], extra: 1}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert sorted(info.value.errors) == [
        f"{path}: jobs[0].exec_sd_configs[0].timeout: not a valid duration string: '1x' (use e.g. 30s, 5m, 1h30m)",
        f"{path}: jobs[0].extra: unknown key",
    ]


@pytest.mark.parametrize("text", ["[]", "just a string", "42"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    assert errors_of(path).startswith(f"{path}: the config must be a mapping")


def test_an_empty_file_is_an_empty_config(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).jobs == []


def test_parse_config_without_a_file_resolves_against_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        {
            "jobs": [
                {"name": "a", "exec_sd_configs": [{"command": ["x"]}], "output": {"file": "a.json"}}
            ]
        }
    )
    assert config.jobs[0].output.file == tmp_path / "a.json"


@pytest.mark.parametrize("text", ["0644", "644", "'0644'", '"644"', "0o644"])
def test_file_mode_is_octal_however_it_is_written(tmp_path: Path, text: str) -> None:
    path = write(
        tmp_path, f"jobs: [{{name: a, {EXEC}, output: {{file: a.json, file_mode: {text}}}}}]"
    )
    assert load_config(path).jobs[0].output.file_mode == 0o644


def test_file_mode_0600(tmp_path: Path) -> None:
    path = write(
        tmp_path, f"jobs: [{{name: a, {EXEC}, output: {{file: a.json, file_mode: 0600}}}}]"
    )
    assert load_config(path).jobs[0].output.file_mode == 0o600


def test_deeply_nested_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "jobs: " + "[" * 10_000)
    assert errors_of(path) == f"{path}: invalid YAML: nested too deeply"


@pytest.mark.parametrize(
    "text",
    [
        "jobs: *x",
        "!!python/object:os.system x",
        "jobs: [{name: a, exec_sd_configs: [{command: !!binary aGk=}]}]",
    ],
)
def test_hostile_yaml_is_an_error(tmp_path: Path, text: str) -> None:
    assert f"{tmp_path}" in errors_of(write(tmp_path, text))
