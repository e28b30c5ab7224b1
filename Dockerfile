# The image the scheduler examples run (scripts/scheduler/): the three logits binaries and the
# ONNX Runtime library they load, on a slim Debian.
#
#   docker build -t registry.example/logits:latest .
#   docker run --rm registry.example/logits:latest logits-build --help
#
# Stage 1 builds with the same toolchain and steps as a checkout (`cargo install --path .`,
# `scripts/fetch-ort.sh`, which takes the library from the pinned PyPI onnxruntime wheel).
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo install --locked --path . --root /opt/logits \
 && LOGITS_CACHE=/opt/logits/cache scripts/fetch-ort.sh > /opt/logits/ort-path \
 && mkdir -p /opt/logits/lib && cp "$(cat /opt/logits/ort-path)" /opt/logits/lib/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/logits/bin/ /usr/local/bin/
COPY --from=build /opt/logits/lib/ /usr/local/lib/logits/
# The binaries look here first (README: "Installing the tools").
ENV ORT_DYLIB_PATH=/usr/local/lib/logits/libonnxruntime.so.1.31.1
ENTRYPOINT []
