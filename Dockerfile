# Both peerchat binaries: `peerchat` (the node) and `peerchat-rendezvous`.
#   docker build -t peerchat .
# Built with cargo in the first stage; the second holds only the binaries on a slim Debian.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin peerchat --bin peerchat-rendezvous \
    && install -m 0755 target/release/peerchat target/release/peerchat-rendezvous /usr/local/bin/

FROM debian:bookworm-slim
# Data and the shared CA certificate live in volumes owned by an unprivileged user.
RUN useradd --system --uid 10001 --home-dir /data peerchat \
    && mkdir -p /data /ca \
    && chown peerchat:peerchat /data /ca
COPY --from=build /usr/local/bin/peerchat /usr/local/bin/peerchat-rendezvous /usr/local/bin/
USER peerchat
WORKDIR /data
ENV PEERCHAT_DATA_DIR=/data
CMD ["peerchat", "--help"]
