"""Self-signed TLS material and bcrypt web configs for tests, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml

from .common import require_binary


@dataclass(frozen=True)
class SelfSigned:
    """A certificate for 127.0.0.1 and localhost (it is its own CA) and its key."""

    cert: Path
    key: Path


def self_signed(directory: Path, name: str = "server") -> SelfSigned:
    """Make a P-256 certificate valid for IP 127.0.0.1 and DNS localhost (Go needs the SAN)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            require_binary("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SelfSigned(cert, key)


def bcrypt_hash(password: str, rounds: int = 4) -> str:
    """A bcrypt hash in htpasswd's ``$2y$`` spelling (cheap rounds for tests)."""
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()
    return "$2y$" + hashed[4:]


def write_web_config(
    path: Path, *, tls: SelfSigned | None = None, users: dict[str, str] | None = None
) -> Path:
    """Write an exporter-toolkit web config with TLS and/or users (plain passwords in)."""
    data: dict[str, object] = {}
    if tls is not None:
        data["tls_server_config"] = {"cert_file": str(tls.cert), "key_file": str(tls.key)}
    if users:
        data["basic_auth_users"] = {user: bcrypt_hash(pw) for user, pw in users.items()}
    path.write_text(yaml.safe_dump(data))
    return path
