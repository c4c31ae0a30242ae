# dmq node image: one process per container, data on a volume, non-root.
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 dmq \
    && mkdir -p /data && chown dmq:dmq /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dmq ./dmq
COPY config ./config
COPY deploy/docker-cluster.toml ./config/docker-cluster.toml
RUN pip install --no-cache-dir .

USER dmq
VOLUME ["/data"]
# protocol ports of the example configs, and the HTTP port used in deploy/
EXPOSE 9091 8081 9100
ENTRYPOINT ["dmq"]
CMD ["server", "--role", "controller,broker", "--node-id", "1", \
     "--config", "/app/config/single.toml", "--data-dir", "/data", "--http-port", "9100"]
