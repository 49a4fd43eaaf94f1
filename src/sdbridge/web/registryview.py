"""What the registry page shows: every registered instance, filtered and one page of it.

Secrets never reach the page, nor the filter: labels are masked with
:func:`sdbridge.masking.mask_config` before they are shown or searched (filtering on the
raw values would let anyone guess a secret one character at a time). Masking 10,000
label sets is not free, so each instance's masked text is kept until its address or
labels change (a heartbeat keeps both).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from aiohttp import web

from ..masking import mask_config, mask_text
from ..registry.instance import Instance, Key
from .status import MAX_PER_PAGE


@dataclass(frozen=True, slots=True)
class RegistryPage:
    """One page of the registered instances after filtering."""

    total: int
    services: int
    matched: int
    page: int
    per_page: int
    items: list[Instance]  # masked

    @property
    def pages(self) -> int:
        """How many pages the matched instances fill (at least 1)."""
        return max(1, -(-self.matched // self.per_page))


@dataclass(frozen=True, slots=True)
class _Masked:
    address: str
    labels: Mapping[str, str]  # the store's own mapping: identity says "unchanged"
    shown: Instance  # masked
    text: str  # lower-cased, for the filter


@lru_cache(maxsize=65536)
def _mask_label(name: str, value: str) -> str:
    """One label's value as shown; values repeat across instances (env=prod), so cache."""
    masked: str = mask_config({name: value})[name]
    return masked


def _mask(instance: Instance) -> _Masked:
    labels = {k: _mask_label(k, v) for k, v in sorted(instance.labels.items())}
    # The store accepts only a plain host:port address (no userinfo, spaces or "=") and
    # instance ids of [A-Za-z0-9_.:@[]-]: of what mask_text looks for, only an "@" can
    # occur, and mask_text costs 10-30 us a call, 10,000 times.
    name = instance.instance
    shown = dataclasses.replace(
        instance, instance=mask_text(name) if "@" in name else name, labels=labels
    )
    text = "\n".join(
        [
            f"service={shown.service}",
            f"instance={shown.instance}",
            f"address={shown.address}",
            *(f"{k}={v}" for k, v in labels.items()),
        ]
    ).lower()
    return _Masked(instance.address, instance.labels, shown, text)


class RegistryView:
    """Builds :class:`RegistryPage` from the store's instances, masked once per change."""

    def __init__(self) -> None:
        self._masked: dict[Key, _Masked] = {}

    def page(self, instances: list[Instance], query: str, page: int, per_page: int) -> RegistryPage:
        """The instances whose masked text holds every word of ``query``, one page."""
        per_page = min(max(per_page, 1), MAX_PER_PAGE)
        masked = []
        cache: dict[Key, _Masked] = {}
        for instance in instances:
            known = self._masked.get(instance.key)
            if (
                known is None
                or known.labels is not instance.labels
                or known.address != instance.address
            ):
                known = _mask(instance)
            elif known.shown.expires_at != instance.expires_at:
                shown = dataclasses.replace(
                    known.shown, expires_at=instance.expires_at, ttl=instance.ttl
                )
                known = _Masked(known.address, known.labels, shown, known.text)
            cache[instance.key] = known
            masked.append(known)
        self._masked = cache  # instances gone are forgotten
        terms = query.lower().split()
        if terms:
            masked = [m for m in masked if all(term in m.text for term in terms)]
        pages = max(1, -(-len(masked) // per_page))
        page = min(max(page, 1), pages)
        start = (page - 1) * per_page
        return RegistryPage(
            total=len(instances),
            services=len({i.service for i in instances}),
            matched=len(masked),
            page=page,
            per_page=per_page,
            items=[m.shown for m in masked[start : start + per_page]],
        )


REGISTRY_VIEW_KEY = web.AppKey("registry_view", RegistryView)
