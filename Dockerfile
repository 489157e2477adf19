# Headwater sync daemon.
#   docker build -t headwater .
#   docker run -v headwater-state:/var/lib/headwater -v $PWD/daemon.yaml:/etc/headwater/daemon.yaml:ro \
#     -p 9000:9000 headwater
FROM python:3.12-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/headwater --create-home headwater

WORKDIR /opt/headwater
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY src ./src
RUN rm -f src/headwater/data/schemas && cp -r schemas src/headwater/data/schemas \
    && pip install --no-cache-dir . \
    && rm -rf /root/.cache

USER headwater
ENV HEADWATER_STATE_DIR=/var/lib/headwater \
    HEADWATER_WEBHOOK_LISTEN=0.0.0.0:9000
VOLUME ["/var/lib/headwater"]
EXPOSE 9000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9000/healthz', timeout=4).status == 200 else 1)"
ENTRYPOINT ["headwater", "daemon"]
CMD ["--config", "/etc/headwater/daemon.yaml"]
