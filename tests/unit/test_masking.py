"""Secrets never leave the process: the masking function, and every output path using it.

The leaks of issue 12 item 3 are reproduced first (an etcd endpoint with a password, a
bad ``ftp://user:PW@host`` endpoint on reload, exec ``env`` and ``--api-key`` arguments),
then each output is checked: /api/v1, the UI, the log (logfmt and JSON), the
``/-/reload`` answer, ``last_reload_error`` and ``sdbridge check``.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from pathlib import Path

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from sdbridge.cli import main
from sdbridge.config import load_config, parse_config
from sdbridge.daemon import Daemon
from sdbridge.errors import ConfigError, redact_url
from sdbridge.logfmt import JsonFormatter, LogfmtFormatter
from sdbridge.masking import MASK, is_secret_name, mask_argv, mask_config, mask_text
from sdbridge.web.app import create_app
from sdbridge.web.flags import WebFlags
from tests.unit.test_web_sd import client_for

PASSWORD = "PASSWORD-7f3a"


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (
            f"etcd http://user:{PASSWORD}@127.0.0.1:2/v3/kv/range: refused",
            f"etcd http://user:{MASK}@127.0.0.1:2/v3/kv/range: refused",
        ),
        ("endpoint 'ftp://user:PW@host' is bad", f"endpoint 'ftp://user:{MASK}@host' is bad"),
        ("https://ghp_TOKEN@github.com/x", f"https://{MASK}@github.com/x"),
        ("http://u:p@ss@h/x", f"http://u:{MASK}@h/x"),  # the last "@" ends the userinfo
        ("http://u:pa/ss@h/x", f"http://u:{MASK}@h/x"),  # a "/" a URL may not hold there
        ("http://127.0.0.1:2/v3/kv", "http://127.0.0.1:2/v3/kv"),
        (
            "cannot run prog --api-key=abc --token xyz -v",
            f"cannot run prog --api-key={MASK} --token {MASK} -v",
        ),
        ("prog '--password=a b' x", f"prog '--password={MASK}' x"),
        ("API_TOKEN=abc REGION=eu", f"API_TOKEN={MASK} REGION=eu"),
        ("{'password': 'hunter2', 'user': 'x'}", f"{{'password': '{MASK}', 'user': 'x'}}"),
        ('{"client_secret": "s3"}', f'{{"client_secret": "{MASK}"}}'),
        ("Authorization: Bearer abc.def", f"Authorization: Bearer {MASK}"),
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {MASK}"),
        ("Basic auth for 2 user(s)", "Basic auth for 2 user(s)"),
        # The value runs to the next space: hiding "&page=2" too beats leaking a tail.
        ("GET /x?access_token=abc&page=2 HTTP/1.1", f"GET /x?access_token={MASK} HTTP/1.1"),
        ("monkey=banana keys=2", "monkey=banana keys=2"),
        ("invalid token: expired", "invalid token: expired"),
    ],
)
def test_mask_text(text: str, masked: str) -> None:
    assert mask_text(text) == masked


@pytest.mark.parametrize(
    "name",
    [
        *("API_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY", "APIKEY", "x-auth", "GITHUB_KEY"),
        *("client_credentials", "MYSQL_PWD", "private_key", "Authorization", "passwd"),
    ],
)
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["REGION", "MONKEY", "keys", "author", "oauth2", "path"])
def test_names_that_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_url_strips_userinfo_with_the_same_rule() -> None:
    assert redact_url("GET http://u:p@ss@h:1/x and https://tok@h2/") == (
        "GET http://h:1/x and https://h2/"
    )


def test_mask_argv() -> None:
    argv = ["prog", "--password", "a b", "--api-key=x,y z", "--name", "n", "http://a:b@h"]
    assert mask_argv(argv) == [
        "prog",
        "--password",
        MASK,
        f"--api-key={MASK}",
        "--name",
        "n",
        f"http://a:{MASK}@h",
    ]


def test_mask_config_masks_env_and_command() -> None:
    dumped = {
        "command": ["fetch", "--api-key=k1", "--token", "k2", "http://u:k3@127.0.0.1:1/"],
        "env": {"API_TOKEN": "k4", "GITHUB_KEY": "k5", "REGION": "eu"},
        "bearer_token": "**********",  # a SecretStr, already masked
        "empty_password": "",
    }
    assert mask_config(dumped) == {
        "command": ["fetch", f"--api-key={MASK}", "--token", MASK, f"http://u:{MASK}@127.0.0.1:1/"],
        "env": {"API_TOKEN": MASK, "GITHUB_KEY": MASK, "REGION": "eu"},
        "bearer_token": "**********",
        "empty_password": "",
    }


# --- a password never survives masking -----------------------------------------------------

# What a password in a URL can be: anything without whitespace.
url_passwords = st.text(
    st.characters(codec="utf-8", exclude_categories=("Z", "C")), min_size=1, max_size=30
)
any_passwords = st.text(min_size=1, max_size=30)


def _independent(render: object, password: str) -> None:
    """Masked output must not depend on the password at all (so it cannot contain it)."""
    assert callable(render)
    assert render(password) == render("x")


@given(url_passwords, st.sampled_from(["http", "https", "ftp", "etcd+grpc"]))
def test_no_password_survives_in_a_url(password: str, scheme: str) -> None:
    def render(pw: str) -> str:
        url = f"{scheme}://user:{pw}@127.0.0.1:2/v3/kv?x=1"
        return mask_text(f"etcd {url}: Cannot connect to host 127.0.0.1:2 ['{url}']")

    _independent(render, password)


@given(any_passwords)
def test_no_password_survives_in_argv_env_or_config(password: str) -> None:
    def render(pw: str) -> object:
        return mask_config(
            {
                "command": ["prog", f"--api-key={pw}", "--password", pw, f"--client-secret={pw}"],
                "env": {"API_TOKEN": pw, "DB_PASSWORD": pw, "SSH_KEY": pw},
                "password": pw,
                "basic_auth": {"username": "u", "password": pw},
            }
        )

    _independent(render, password)


@given(url_passwords.filter(lambda p: not set(p) & set("'\"")))
def test_no_password_survives_in_free_text(middle: str) -> None:
    # shlex quotes some passwords and not others, so the text may differ; what must hold
    # is that no part of the password is left: both of its ends are masked.
    password = f"Zq9{middle}Qz9"
    argv = ["prog", f"--api-key={password}", "--token", password, f"API_TOKEN={password}"]
    text = mask_text(f"cannot run {shlex.join(argv)}: exit 1 {{'password': '{password}'}}")
    assert "Zq9" not in text
    assert "Qz9" not in text


# --- every output path --------------------------------------------------------------------


def _log_text(records: list[logging.LogRecord]) -> str:
    lines = []
    for formatter in (LogfmtFormatter(), JsonFormatter()):
        lines.extend(formatter.format(r) for r in records)
    return "\n".join(lines)


async def _first_error(daemon: Daemon, job: str) -> None:
    """Wait until the job's first mechanism has failed once (it cannot succeed)."""
    for _ in range(400):
        if daemon.jobs[job].status().mechanisms[0].health.last_error:
            return
        await asyncio.sleep(0.025)
    pytest.fail(f"job {job} never failed")


async def _get_all(client: TestClient, paths: list[str]) -> str:  # type: ignore[type-arg]
    texts = [await (await client.get(p)).text() for p in paths]
    return "\n".join(texts)


async def test_etcd_endpoint_password_is_masked_everywhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12 item 3: the password showed in last_error, errors, the UI and the log."""
    caplog.set_level(logging.INFO)
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "e",
                    "etcd_sd_configs": [
                        {
                            # Port 2 on loopback: nothing listens, the connection is refused.
                            "endpoints": [f"http://user:{PASSWORD}@127.0.0.1:2"],
                            "prefix": "/s/",
                            "layout": "kratos",
                        }
                    ],
                }
            ]
        }
    )
    daemon = Daemon(config)
    daemon.start()
    client = await client_for(create_app(daemon))
    try:
        await _first_error(daemon, "e")
        # The HTTP layer now leaves userinfo out of its own errors; nothing shows it.
        shown = await _get_all(client, ["/api/v1/jobs", "/api/v1/jobs/e", "/", "/jobs/e"])
        assert PASSWORD not in shown
        assert PASSWORD not in _log_text(caplog.records)

        # Any error that still quotes the URL (a plugin's, a client library's) is masked.
        # (describe() strips userinfo, so the message is set as a plugin's status could be.)
        status = daemon.jobs["e"].runners[0].context.status
        status.last_error = f"etcd http://user:{PASSWORD}@127.0.0.1:2/v3/kv/range: refused"
        logging.getLogger("sdbridge.discovery.etcd").error("failed: %s", status.last_error)
        body = (await (await client.get("/api/v1/jobs")).json())["data"]["jobs"][0]
        assert f"user:{MASK}@127.0.0.1:2" in body["mechanisms"][0]["last_error"]
        assert f"user:{MASK}@127.0.0.1:2" in body["errors"][0]
        shown = await _get_all(client, ["/api/v1/jobs", "/api/v1/jobs/e", "/", "/jobs/e"])
        assert PASSWORD not in shown
        assert f"user:{MASK}@127.0.0.1:2" in shown
        assert PASSWORD in "".join(r.getMessage() for r in caplog.records)  # the raw record
        log = _log_text(caplog.records)
        assert f"user:{MASK}@127.0.0.1:2" in log
        assert PASSWORD not in log
    finally:
        await client.close()
        await daemon.stop()


async def test_bad_endpoint_is_masked_in_reload_errors(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 12 item 3: ``ftp://user:PW@host`` came back in /-/reload, the UI and the log."""
    path = tmp_path / "sdbridge.yml"
    path.write_text("jobs: [{name: a, exec_sd_configs: [{command: [echo, '[]']}]}]\n")
    daemon = Daemon(load_config(path), config_path=path)
    client = await client_for(create_app(daemon, flags=WebFlags(enable_lifecycle=True)))
    bad = {
        "jobs": [
            {
                "name": "a",
                "etcd_sd_configs": [
                    {
                        "endpoints": [f"ftp://user:{PASSWORD}@host"],
                        "prefix": "/",
                        "layout": "kratos",
                    }
                ],
            }
        ]
    }
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as raw:  # the error itself quotes the endpoint
        load_config(path)
    assert PASSWORD in str(raw.value)
    try:
        response = await client.post("/-/reload")
        answer = await response.text()
        assert response.status == 500
        assert f"ftp://user:{MASK}@host" in answer
        assert PASSWORD not in answer
        assert daemon.last_reload_error is not None
        assert PASSWORD not in daemon.last_reload_error
        api = orjson.loads(await (await client.get("/api/v1/jobs")).read())
        assert f"ftp://user:{MASK}@host" in api["data"]["config"]["last_reload_error"]
        index = await (await client.get("/")).text()
        assert 'id="reload-error"' in index
        assert PASSWORD not in index
        assert PASSWORD not in _log_text(caplog.records)
    finally:
        await client.close()
        await daemon.stop()


def test_check_masks_what_it_prints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sdbridge.yml"
    path.write_text(
        "jobs: [{name: a, etcd_sd_configs: "
        f"[{{endpoints: ['ftp://user:{PASSWORD}@host'], prefix: /, layout: kratos}}]}}]\n"
    )
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"ftp://user:{MASK}@host" in err
    assert PASSWORD not in err


async def test_exec_env_and_arguments_are_masked_in_api_ui_and_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 12 item 3: exec ``env`` values and ``--api-key=...`` arguments were shown."""
    config = parse_config(
        {
            "jobs": [
                {
                    "name": "x",
                    "exec_sd_configs": [
                        {
                            "command": [
                                *("/nonexistent/fetch", f"--api-key={PASSWORD}"),
                                *("--token", PASSWORD),
                            ],
                            "env": {"SERVICE_AUTH": PASSWORD, "REGION": "eu"},
                        }
                    ],
                }
            ]
        }
    )
    daemon = Daemon(config)
    daemon.start()
    client = await client_for(create_app(daemon))
    try:
        await _first_error(daemon, "x")
        data = (await (await client.get("/api/v1/jobs/x")).json())["data"]
        mechanism = data["mechanisms"][0]
        assert mechanism["config"]["env"] == {"SERVICE_AUTH": MASK, "REGION": "eu"}
        assert mechanism["config"]["command"][1:] == [f"--api-key={MASK}", "--token", MASK]
        assert "cannot run" in mechanism["last_error"]
        shown = await _get_all(client, ["/api/v1/jobs", "/api/v1/jobs/x", "/", "/jobs/x"])
        assert PASSWORD not in shown
        assert PASSWORD not in _log_text(caplog.records)
    finally:
        await client.close()
        await daemon.stop()


def test_log_fields_and_tracebacks_are_masked() -> None:
    try:
        raise ValueError(f"cannot reach http://u:{PASSWORD}@127.0.0.1:1")
    except ValueError:
        import sys

        record = logging.LogRecord("sdbridge", logging.ERROR, __file__, 1, "%s", ("x",), None)
        record.exc_info = sys.exc_info()
    record.url = f"http://u:{PASSWORD}@127.0.0.1:1"
    record.token = PASSWORD
    record.details = {"password": PASSWORD}
    text = _log_text([record])
    assert PASSWORD not in text
    assert f"u:{MASK}@127.0.0.1:1" in text
