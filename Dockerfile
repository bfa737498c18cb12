# syntax=docker/dockerfile:1
# One image for every secretlog node: `secretlog writer|reader|replicator ...` and the operator
# CLI. Build: `docker build -t secretlog .` (compose/docker-compose.yml does it for you).

# --- build: the release binary of the `secretlog` CLI (secretlog-ops) ---------------------------
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-slim-bookworm AS build
# librdkafka is built from source (rdkafka's bundled build): make, a C/C++ toolchain, cmake,
# zlib headers, and OpenSSL headers found through pkg-config (Kafka over SSL / SASL_SSL); aws-lc
# (TLS to S3) needs cmake too.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p secretlog-ops --bin secretlog \
 && install -m 0755 target/release/secretlog /usr/local/bin/secretlog

# --- runtime: slim Debian, non-root ---------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates for S3 and Kafka over TLS; libssl3 for librdkafka's TLS (Kafka SSL / SASL_SSL);
# curl for container health checks (`curl -fsS http://127.0.0.1:8300/v1/sys/health?perfstandbyok=true`).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/secretlog --shell /usr/sbin/nologin secretlog \
 && install -d -o secretlog -g secretlog -m 0750 /var/lib/secretlog /var/lib/secretlog/data /var/lib/secretlog/keys
COPY --from=build /usr/local/bin/secretlog /usr/local/bin/secretlog
USER secretlog
WORKDIR /var/lib/secretlog
# State lives under /var/lib/secretlog/data (mount one volume per node), keys under .../keys.
ENTRYPOINT ["secretlog"]
CMD ["--help"]
