# The trustscale binary (operator, probe, trust inspect) with every scaler,
# Kafka included. Build context: the repository root.
#   docker build -t trustscale .
FROM rust:1-bookworm AS build
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        libssl-dev pkg-config make g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features kafka --bin trustscale

FROM debian:bookworm-slim
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/trustscale /usr/local/bin/trustscale
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/trustscale"]
