"""Shared fixtures."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# CI machines are small (2 cores) and busy; examples are counted, not timed.
settings.register_profile(
    "sdbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sdbridge"))
