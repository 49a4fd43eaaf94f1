"""sdbridge itself as a child process (``sdbridge run``), for end-to-end tests and benchmarks."""

from __future__ import annotations

import base64
import json
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .common import ManagedProcess, free_port, wait_until


class Sdbridge:
    """``sdbridge run`` on 127.0.0.1 on a free port; stop() ends it and its children."""

    def __init__(
        self,
        workdir: Path,
        config: dict[str, Any],
        *,
        web_config: Path | None = None,
        ca_file: Path | None = None,
        auth: tuple[str, str] | None = None,
        wait_ready: bool = True,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.config_path = workdir / "sdbridge.yml"
        self.write_config(config)
        scheme = "https" if web_config is not None and ca_file is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._ssl = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        self._auth = auth
        argv = [
            sys.executable,
            "-c",
            "import sys; from sdbridge.cli import main; sys.exit(main())",
            "run",
            f"--config.file={self.config_path}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=debug",
        ]
        if web_config is not None:
            argv.append(f"--web.config.file={web_config}")
        self.process = ManagedProcess(argv, log_path=workdir / "sdbridge.log", cwd=workdir)
        if wait_ready:
            wait_until(self.is_ready, timeout=60, what=f"sdbridge ready ({self.log_path})")

    @property
    def log_path(self) -> Path:
        """Where sdbridge's log goes."""
        return self.process.log_path

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the config file (reload to apply it)."""
        self.config_path.write_text(yaml.safe_dump(config))

    def request(
        self, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        """Send a request with the configured TLS trust and credentials; return status, body."""
        request = urllib.request.Request(f"{self.url}{path}", method=method, headers=headers or {})
        if self._auth is not None:
            token = base64.b64encode(f"{self._auth[0]}:{self._auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10, context=self._ssl) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def is_ready(self) -> bool:
        """Whether /-/ready answers 200; fails fast if the process died."""
        if not self.process.alive():
            raise AssertionError(f"sdbridge exited:\n{self.process.log_text()[-3000:]}")
        try:
            return self.request("/-/ready")[0] == 200
        except OSError:
            return False

    def targets(self, job: str) -> list[dict[str, Any]]:
        """The parsed body of /sd/<job>."""
        status, body = self.request(f"/sd/{job}")
        assert status == 200, (status, body)
        return list(json.loads(body))

    def stop(self) -> None:
        """Stop sdbridge."""
        self.process.stop()
