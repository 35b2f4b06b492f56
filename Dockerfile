# The `warren` binary in a small Debian image: ENTRYPOINT is `warren`, so the command is
# the role or operator command (`worker --queue default`, `migrate`, `publish demo.noop`).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin warren

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin warren
COPY --from=builder /src/target/release/warren /usr/local/bin/warren
USER warren
# /metrics, /healthz, /readyz (WARREN_METRICS_ADDR)
EXPOSE 9477
ENTRYPOINT ["warren"]
CMD ["--help"]
