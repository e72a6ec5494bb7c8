# syntax=docker/dockerfile:1
#
# outbox-relay container image: the release binary on distroless (glibc, CA
# certificates, no shell, no package manager), running as an unprivileged user.
#
#   docker build -t outbox-relay .
#   docker run --rm -p 9187:9187 \
#     -v "$PWD/relay.toml:/etc/outbox-relay/config.toml:ro" \
#     -e OUTBOX_RELAY_SOURCE_URL='postgres://relay:...@db:5432/app' \
#     -e OUTBOX_RELAY_BROKER_URL='amqp://relay:...@rabbitmq:5672/%2f' \
#     outbox-relay
#
# In a container, set `[http] listen = "0.0.0.0:9187"` in the config: the
# default 127.0.0.1 is the container's own loopback, which Prometheus (and a
# published port) cannot reach. The HEALTHCHECK below runs inside the
# container, so it works with either.
#
# Secrets: prefer files (Docker/Kubernetes secrets) over plain environment
# variables: OUTBOX_RELAY_SOURCE_URL_FILE=/run/secrets/source-url and
# OUTBOX_RELAY_BROKER_URL_FILE=/run/secrets/broker-url.
#
# Stopping: on SIGTERM the relay drains in-flight confirms for up to
# broker.shutdown_timeout (30 s by default) and exits 0. Docker kills after
# 10 s unless told otherwise: use `docker stop -t 45`, `stop_grace_period: 45s`
# (compose) or `terminationGracePeriodSeconds: 45` (Kubernetes).

# The toolchain the project is built and tested with; Cargo.lock needs 1.88 or newer.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every source edit. The manifest names src/main.rs,
# src/lib.rs and tests/main.rs, so stand-ins for them are enough to build
# every dependency.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/main.rs \
    && cargo build --release --locked --bin outbox-relay \
    && rm -rf src

# Then the real sources, and the default outbox table's DDL that src/setup.rs
# includes. COPY keeps the files' own modification times, which may be older
# than the stand-ins' build: touch them so cargo rebuilds the crate.
COPY src ./src
COPY deploy/sql ./deploy/sql
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin outbox-relay \
    && install -D -m 0755 target/release/outbox-relay /out/outbox-relay

# glibc and libgcc_s (all the binary links against; TLS is rustls) plus the
# CA bundle, user `nonroot` (65532), nothing else.
FROM gcr.io/distroless/cc-debian12:nonroot

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="outbox-relay" \
      org.opencontainers.image.description="Transactional outbox relay: PostgreSQL logical replication (pgoutput) to RabbitMQ with publisher confirms" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"

COPY --from=builder /out/outbox-relay /usr/local/bin/outbox-relay

# distroless's `nonroot` user, by number: Kubernetes' runAsNonRoot can only
# verify a numeric user.
USER 65532:65532
ENV OUTBOX_RELAY_CONFIG=/etc/outbox-relay/config.toml
# /metrics, /healthz, /readyz (http.listen)
EXPOSE 9187
STOPSIGNAL SIGTERM

# Liveness: /healthz answers 200 while the process is alive and not wedged.
# (`healthcheck --ready` probes /readyz: streaming, or a healthy standby.)
# If http.listen uses another port, override this with that --addr.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/outbox-relay", "healthcheck", "--addr", "127.0.0.1:9187"]

ENTRYPOINT ["/usr/local/bin/outbox-relay"]
CMD ["run"]
