#!/bin/sh
# The container's entrypoint. With no arguments, or only options, it runs
#   sdbridge run --config.file=$SDBRIDGE_CONFIG --web.listen-address=$SDBRIDGE_LISTEN_ADDRESS [options]
# after refusing to start, with a clear message and a non-zero status, when the config is
# missing or invalid (the error `sdbridge check` prints) or /var/lib/sdbridge is not
# writable. A first argument that is a subcommand (check, once, register, --version, ...)
# runs `sdbridge <arguments>` as given.
set -eu

if [ "$#" -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec sdbridge "$@"
fi
if [ "${1:-}" = "--version" ] || [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
  exec sdbridge "$@"
fi

config=${SDBRIDGE_CONFIG:-/etc/sdbridge/sdbridge.yml}
state=/var/lib/sdbridge

if ! sdbridge check "$config" >/dev/null; then
  echo "sdbridge-entrypoint: refusing to start: mount a valid config at $config" \
    "(docker run -v /path/to/sdbridge.yml:$config:ro ...)" >&2
  exit 1
fi
probe="$state/.sdbridge-write-test.$$"
if ! (: >"$probe") 2>/dev/null; then
  echo "sdbridge-entrypoint: refusing to start: $state is not writable by user" \
    "$(id -un) (uid $(id -u)); give the volume to that uid (chown $(id -u) on the host)" >&2
  exit 1
fi
rm -f "$probe"

exec sdbridge run --config.file="$config" --web.listen-address="${SDBRIDGE_LISTEN_ADDRESS:-0.0.0.0:9099}" "$@"
