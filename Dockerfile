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

# `--target local` (docker-compose.yml): standalone mode with local functions. The same binary,
# plus the function runtimes it runs functions on (Python, Node, Ruby; runtimes/), their package
# managers for a function's dependencies (pip, npm, Bundler), and tar's decompressors for archived
# code. Found by the broker in ../share/kubeless-broker/runtimes from its executable.
FROM debian:bookworm-slim AS local
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates libssl3 zlib1g \
      python3 python3-venv nodejs npm ruby ruby-sinatra ruby-webrick bundler bzip2 xz-utils \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/kubeless-broker && chown 65532:65532 /var/lib/kubeless-broker
COPY runtimes /usr/local/share/kubeless-broker/runtimes
ENV KUBELESS_DEPS_DIR=/opt/kubeless-runtimes
RUN /usr/local/share/kubeless-broker/runtimes/install
COPY --from=build /kubeless-broker /usr/local/bin/kubeless-broker
# pip's and npm's caches, and the state (local functions' files), in the state volume.
ENV HOME=/var/lib/kubeless-broker KUBELESS_STATE_DIR=/var/lib/kubeless-broker
USER 65532:65532
EXPOSE 9095 9097
ENTRYPOINT ["/usr/local/bin/kubeless-broker"]

# Runtime (the default target, for clusters): the shared libraries the binary links (libssl,
# libcrypto, libz), CA certificates, nothing else; uid 65532.
FROM debian:bookworm-slim
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends ca-certificates libssl3 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/kubeless-broker && chown 65532:65532 /var/lib/kubeless-broker
COPY --from=build /kubeless-broker /usr/local/bin/kubeless-broker
USER 65532:65532
EXPOSE 9095
ENTRYPOINT ["/usr/local/bin/kubeless-broker"]
