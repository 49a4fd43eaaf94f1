"""sdbridge: bridge any service registry to Prometheus through file_sd and http_sd.

The public SDK for writing mechanisms lives in :mod:`sdbridge.sdk`.
"""

__version__ = "0.1.0"
