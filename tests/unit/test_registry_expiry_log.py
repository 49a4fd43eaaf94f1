"""Registry expiry logs name what expired: the first 10 instances and how many more."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sdbridge.registry.instance import name_some
from sdbridge.registry.store import Store, db_path


def test_name_some_is_bounded() -> None:
    assert name_some({("web", "b"), ("web", "a")}) == "web/a, web/b"
    keys = {("svc", f"i{n:02d}") for n in range(13)}
    assert name_some(keys) == ", ".join(f"svc/i{n:02d}" for n in range(10)) + " and 3 more"


async def test_expiry_log_names_each_expired_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await Store.open(db_path(tmp_path))
    for n in range(12):
        await store.put("api", f"i{n:02d}", f"127.0.0.1:{8000 + n}", {}, 0.05)
    await store.put("api", "kept", "127.0.0.1:9000", {}, 3600)
    await store.close()
    await asyncio.sleep(0.1)  # their ttls run out while the store is closed
    caplog.set_level(logging.INFO, logger="sdbridge.registry")
    reopened = await Store.open(db_path(tmp_path))  # expires all twelve in one round
    await reopened.close()
    [line] = [r.getMessage() for r in caplog.records if "expired" in r.getMessage()]
    first_ten = ", ".join(f"api/i{n:02d}" for n in range(10))
    assert line == f"12 registration(s) expired: {first_ten} and 2 more"
