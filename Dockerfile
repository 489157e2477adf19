# Headwater sync daemon.
#   docker build -t headwater .
#   docker run -v headwater-state:/var/lib/headwater -v $PWD/daemon.yaml:/etc/headwater/daemon.yaml:ro \
#     -p 9000:9000 headwater
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates openssh-client libyaml-0-2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/headwater --create-home headwater

WORKDIR /opt/headwater
COPY pyproject.toml README.md ./
COPY src ./src
COPY setup.py ./
# The JSON schemas are package data (src/headwater/data/schemas; schemas/ links to them).
# The compiled YAML composer builds with gcc and libyaml-dev, removed once it is built.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libyaml-dev \
    && pip install --no-cache-dir . \
    && python -c "from headwater.schemas import SCHEMA_DIR as d; assert (d / 'flow.schema.json').is_file(), d" \
    && python -c "import headwater._compose" \
    && apt-get purge -y --auto-remove gcc libc6-dev libyaml-dev \
    && rm -rf /var/lib/apt/lists/* /root/.cache

USER headwater
ENV HEADWATER_STATE_DIR=/var/lib/headwater \
    HEADWATER_WEBHOOK_LISTEN=0.0.0.0:9000 \
    PYTHONUNBUFFERED=1
VOLUME ["/var/lib/headwater"]
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=4).status == 200 else 1)"
# SIGTERM lets the apply in flight finish, then exits 0; give long applies time to finish
# (docker stop -t, compose stop_grace_period, Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["headwater", "daemon"]
CMD ["--config", "/etc/headwater/daemon.yaml"]
