# Prometheus where prom/prometheus cannot be pulled: Debian's `prometheus` package on the local
# Debian base (scripts/local-base.sh builds it), with the repo's config and rules. Runs like the
# official image: the entrypoint is prometheus, data in /prometheus, listens on 9090; wget is
# there for compose's healthcheck.
#   docker build --network host --build-arg BASE=spa-base:bookworm -f scripts/prometheus.Dockerfile -t spa-prometheus:local .
ARG BASE=debian:bookworm-slim
FROM ${BASE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus /etc/prometheus \
    && chown prometheus:prometheus /prometheus

COPY monitoring/prometheus/prometheus.yml monitoring/prometheus/rules.yml /etc/prometheus/

USER prometheus
WORKDIR /prometheus
VOLUME ["/prometheus"]
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
