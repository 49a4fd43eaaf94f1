"""The HTTP server: http_sd, health, reload, metrics, API and UI."""
