# kubeless-broker: multi-stage build, small non-root runtime image.
#   docker build -t kubeless-broker .
# Build stage: librdkafka (bundled, built with cmake) needs these headers.
FROM rust:1-bookworm AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends cmake libcurl4-openssl-dev libssl-dev libsasl2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kubeless-broker \
 && cp target/release/kubeless-broker /kubeless-broker

# Runtime: the shared libraries the binary links (libssl, libcrypto, libz), CA certificates, nothing else; uid 65532.
FROM debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/kubeless-broker && chown 65532:65532 /var/lib/kubeless-broker
COPY --from=build /kubeless-broker /usr/local/bin/kubeless-broker
USER 65532:65532
EXPOSE 9095
ENTRYPOINT ["/usr/local/bin/kubeless-broker"]
