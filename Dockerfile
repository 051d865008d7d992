# castellan: one binary for serve, worker, migrate and the operator commands.
#
# Base images are pinned to exact tags (a Rust release; a dated Debian build).
# A tag can still be pushed again: to pin by digest, look it up with
#   docker buildx imagetools inspect rust:1.95.0-bookworm
# and write FROM rust:1.95.0-bookworm@sha256:<digest> (likewise for Debian).

FROM rust:1.95.0-bookworm AS builder
WORKDIR /src
# Every workspace member must be present for cargo to load the workspace,
# bench included; migrations/ is embedded by sqlx::migrate! at compile time.
COPY Cargo.toml Cargo.lock ./
COPY core core
COPY service service
COPY jobs jobs
COPY bench bench
COPY src src
COPY migrations migrations
# Cache mounts keep the registry and target/ between builds; the binary is
# copied out in the same step because the target mount is not in the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p castellan --locked \
    && cp target/release/castellan /usr/local/bin/castellan

FROM debian:bookworm-20251229-slim
# ca-certificates: TLS to SMTP relays (rustls); wget: compose's healthcheck.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates wget \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 castellan \
    && useradd --uid 10001 --gid castellan --home-dir /var/lib/castellan \
       --create-home --shell /usr/sbin/nologin castellan
COPY --from=builder /usr/local/bin/castellan /usr/local/bin/castellan
# A SQLite DATABASE_URL (the default ./castellan.db) lands here, and beside
# it the JWT secret generated when GOTRUE_JWT_SECRET is unset
# (castellan.db.jwt-secret). A volume, so that neither goes with the
# container: name it (`docker run -v castellan-data:/var/lib/castellan …`)
# to keep it across `docker run --rm` and image upgrades; an anonymous one
# is deleted with its container by `--rm` or `docker rm -v`.
WORKDIR /var/lib/castellan
VOLUME /var/lib/castellan
ENV GOTRUE_API_HOST=0.0.0.0
# 8081: the API (PORT); 9102: /metrics on CASTELLAN_METRICS_ADDR (loopback unless set).
EXPOSE 8081 9102
USER castellan
STOPSIGNAL SIGTERM
ENTRYPOINT ["castellan"]
CMD ["serve"]
