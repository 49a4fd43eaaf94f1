# sdbridge as a container image.
#
#   docker build -t sdbridge .
#   docker run -p 9099:9099 -v "$PWD/examples/docker/sdbridge.yml:/etc/sdbridge/sdbridge.yml:ro" \
#       -v "$PWD/registry.token:/etc/sdbridge/registry.token:ro" sdbridge
#
# The base image is a build argument: Python's official slim image by default (any Debian-
# or Ubuntu-like image with python3, python3-venv and useradd works). By default the build
# installs this source tree with its dependencies from the package index. To build with no
# index at all, put a wheelhouse (`pip wheel -w wheelhouse .`) in the build context and pass
# --build-arg WHEELHOUSE=wheelhouse.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ARG WHEELHOUSE=
COPY . /src
RUN set -eu; \
    python3 -m venv /opt/sdbridge; \
    if [ -n "$WHEELHOUSE" ]; then \
      /opt/sdbridge/bin/pip install --no-cache-dir --no-index --find-links "/src/$WHEELHOUSE" sdbridge; \
    else \
      /opt/sdbridge/bin/pip install --no-cache-dir /src; \
    fi; \
    /opt/sdbridge/bin/sdbridge --version

FROM ${BASE_IMAGE}
RUN set -eu; \
    useradd --system --uid 10001 --user-group --home-dir /var/lib/sdbridge --no-create-home \
      --shell /usr/sbin/nologin sdbridge; \
    mkdir -p /etc/sdbridge /var/lib/sdbridge/targets; \
    chown -R sdbridge:sdbridge /var/lib/sdbridge
COPY --from=build /opt/sdbridge /opt/sdbridge
COPY docker/entrypoint.sh /usr/local/bin/sdbridge-entrypoint
ENV PATH=/opt/sdbridge/bin:$PATH \
    SDBRIDGE_CONFIG=/etc/sdbridge/sdbridge.yml \
    SDBRIDGE_LISTEN_ADDRESS=0.0.0.0:9099
USER sdbridge
WORKDIR /var/lib/sdbridge
VOLUME ["/etc/sdbridge", "/var/lib/sdbridge"]
EXPOSE 9099
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/opt/sdbridge/bin/python", "-c", "import os, urllib.request; port = os.environ['SDBRIDGE_LISTEN_ADDRESS'].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/-/healthy', timeout=4)"]
ENTRYPOINT ["/usr/local/bin/sdbridge-entrypoint"]
