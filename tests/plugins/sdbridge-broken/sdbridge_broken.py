"""A plugin with a bug at import time."""

raise RuntimeError("sdbridge_broken is broken on purpose")
