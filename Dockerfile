# The `warren` binary in a small Debian image: ENTRYPOINT is `warren`, so the command is
# the role or operator command (`worker --queue default`, `migrate`, `publish demo.noop`).
# Migrations are embedded in the binary at compile time (sqlx::migrate! in core/src/migrations.rs),
# so the runtime image needs no files besides it. Runs as the unprivileged user 10001
# (numeric, so Kubernetes' runAsNonRoot can verify it).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin warren

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin warren
COPY --from=builder /src/target/release/warren /usr/local/bin/warren
USER 10001
# /metrics, /healthz, /readyz (WARREN_METRICS_ADDR)
EXPOSE 9477
ENTRYPOINT ["warren"]
CMD ["--help"]
