"""The shared HTTP client blocks: tls_config, basic_auth, authorization."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdbridge.discovery._http import Authorization, BasicAuth, TLSConfig, auth_headers
from sdbridge.errors import BackendError


def test_headers_come_from_the_block_that_is_set(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cret\n", encoding="utf-8")
    basic = BasicAuth(username="alice", password_file=secret)
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert auth_headers(basic, None) == {"Authorization": expected}
    bearer = Authorization(credentials_file=secret)
    assert auth_headers(None, bearer) == {"Authorization": "Bearer s3cret"}
    assert auth_headers(None, Authorization(type="Token", credentials="x")) == {
        "Authorization": "Token x"
    }
    assert auth_headers(None, None) == {}


def test_a_missing_secret_file_names_the_option(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match=r"basic_auth\.password_file"):
        BasicAuth(username="a", password_file=tmp_path / "absent").header()


def test_relative_files_resolve_against_the_config_directory(tmp_path: Path) -> None:
    tls = TLSConfig(ca_file=Path("ca.pem"), cert_file=Path("/abs/c.pem"), key_file=Path("k"))
    resolved = tls.resolve_paths(tmp_path)
    assert (resolved.ca_file, resolved.cert_file, resolved.key_file) == (
        tmp_path / "ca.pem",
        Path("/abs/c.pem"),
        tmp_path / "k",
    )
    basic = BasicAuth(username="a", password_file=Path("pw")).resolve_paths(tmp_path)
    assert basic.password_file == tmp_path / "pw"
    assert BasicAuth(username="a").resolve_paths(tmp_path) == BasicAuth(username="a")


@pytest.mark.parametrize(
    ("model", "fields", "message"),
    [
        (TLSConfig, {"cert_file": "c.pem"}, "go together"),
        (BasicAuth, {"username": "a", "password": "p", "password_file": "f"}, "not both"),
        (Authorization, {"credentials": "c", "credentials_file": "f"}, "not both"),
        (Authorization, {"type": "basic", "credentials": "c"}, "use basic_auth"),
    ],
)
def test_conflicting_fields_are_refused(
    model: type[TLSConfig | BasicAuth | Authorization], fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        model.model_validate(fields)
