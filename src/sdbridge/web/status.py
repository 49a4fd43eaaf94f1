"""What the API and the UI show of jobs: state, errors, masked configs, target pages.

Both read the same dictionaries, so the UI never shows anything the API does not.
Configs are dumped in pydantic's JSON mode, which masks ``SecretStr``; on top of that,
configs and every error message pass through :mod:`sdbridge.masking` (URL userinfo,
secret-looking keys, env values and command arguments), in case a plugin forgot to
declare a secret or a backend's error quotes a URL with its password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..daemon import Daemon
from ..job import Job, JobStatus
from ..masking import mask_config, mask_text
from ..model import ADDRESS_LABEL, LabelSet
from ..snapshot import Snapshot

MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 100


def job_state(status: JobStatus) -> str:
    """One word for a job, from its ``status()``: syncing, failing, degraded, holding, stale or ok."""
    if any(m.health.last_error for m in status.mechanisms):
        return "failing"
    if status.stale is None:  # no snapshot yet
        return "syncing"
    if any(o.last_error for o in status.outputs):
        return "degraded"  # discovery works, but an output (the file, the state) does not
    if status.guard.holding:
        return "holding"
    if status.stale:
        return "stale"
    return "ok"


def job_errors(status: JobStatus) -> list[str]:
    """Every current error of a job (mechanisms and outputs), each naming its source."""
    errors = []
    for m in status.mechanisms:
        if m.health.last_error:
            errors.append(f"{m.label}: {mask_text(m.health.last_error)}")
    for output in status.outputs:
        if output.last_error:
            errors.append(f"output {output.name}: {mask_text(output.last_error)}")
    return errors


def job_summary(job: Job) -> dict[str, Any]:
    """The API's view of one job, without its targets."""
    status = job.status()
    last_sync = max(
        (m.health.last_success for m in status.mechanisms if m.health.last_success), default=None
    )
    data = status.as_json()
    for m in data["mechanisms"]:
        m["config"] = mask_config(m["config"])
        m["last_error"] = m["last_error"] and mask_text(m["last_error"])
    for output in data["outputs"]:
        output["last_error"] = output["last_error"] and mask_text(output["last_error"])
    return {
        **data,
        "state": job_state(status),
        "errors": job_errors(status),
        "last_sync": last_sync,
        "http_sd_path": f"/sd/{job.name}",
    }


def config_status(daemon: Daemon) -> dict[str, Any]:
    """Whether the running config came from a successful reload, and the last error."""
    return {
        "path": str(daemon.config_path) if daemon.config_path else None,
        "last_reload": daemon.last_reload,
        "last_reload_successful": daemon.last_reload_error is None,
        "last_reload_error": daemon.last_reload_error and mask_text(daemon.last_reload_error),
        "ready": daemon.ready,
    }


@dataclass(frozen=True)
class TargetPage:
    """One page of a job's targets after filtering."""

    total: int
    matched: int
    page: int
    per_page: int
    items: list[LabelSet]

    @property
    def pages(self) -> int:
        """How many pages the matched targets fill (at least 1)."""
        return max(1, -(-self.matched // self.per_page))

    def as_json(self) -> dict[str, Any]:
        """The page as the API returns it."""
        return {
            "total": self.total,
            "matched": self.matched,
            "page": self.page,
            "pages": self.pages,
            "per_page": self.per_page,
            "items": self.items,
        }


class TargetIndex:
    """Lower-cased ``name=value`` text of each target, built once per snapshot."""

    def __init__(self) -> None:
        self._snapshots: dict[str, tuple[Snapshot, list[str]]] = {}

    def _texts(self, job: str, snapshot: Snapshot) -> list[str]:
        cached = self._snapshots.get(job)
        if cached is None or cached[0] is not snapshot:
            texts = [
                "\n".join(f"{k}={v}" for k, v in entry.labels.items()).lower()
                for entry in snapshot.entries
            ]
            cached = (snapshot, texts)
            self._snapshots[job] = cached
        return cached[1]

    def retain(self, jobs: set[str]) -> None:
        """Forget jobs that no longer exist."""
        for name in self._snapshots.keys() - jobs:
            del self._snapshots[name]

    def page(
        self, job: str, snapshot: Snapshot | None, query: str, page: int, per_page: int
    ) -> TargetPage:
        """Targets whose labels contain every word of ``query``, one page of them."""
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        if snapshot is None:
            return TargetPage(0, 0, 1, per_page, [])
        terms = query.lower().split()
        if terms:
            texts = self._texts(job, snapshot)
            positions = [i for i, t in enumerate(texts) if all(term in t for term in terms)]
        else:
            positions = list(range(snapshot.target_count))
        pages = max(1, -(-len(positions) // per_page))
        page = min(max(page, 1), pages)
        start = (page - 1) * per_page
        items = [_ordered(snapshot.entries[i].labels) for i in positions[start : start + per_page]]
        return TargetPage(snapshot.target_count, len(positions), page, per_page, items)


def _ordered(labels: LabelSet) -> LabelSet:
    """``__address__`` first, then the other labels sorted."""
    rest = {k: labels[k] for k in sorted(labels) if k != ADDRESS_LABEL}
    return {ADDRESS_LABEL: labels[ADDRESS_LABEL], **rest}


def int_param(value: str | None, default: int) -> int:
    """A query parameter as a bounded int; junk gives the default."""
    if value is None or not (value.isascii() and value.isdigit()) or len(value) > 9:
        return default
    return int(value)
