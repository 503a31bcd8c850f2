# syntax=docker/dockerfile:1
# anvil's container image: the `coordinator` and `worker` binaries on PATH, the example configs
# and the bundled example data under /opt/anvil, a non-root user (uid/gid 10001), and the
# working directory /anvil, where `coordinator deploy k8s` mounts the run volume.
#
#   docker build -t anvil:latest .
#   docker run --rm anvil:latest coordinator --help
#
# Two stages: the build one has the Rust toolchain of rust-toolchain.toml and the HDF5 headers;
# the runtime one only the HDF5 runtime library (Debian bookworm's libhdf5-103-1, which pulls
# in what libhdf5_serial.so.103 links to), libstdc++, and ffmpeg (5.1), which pose runs use to
# decode the frames of labels that refer to videos (mp4, avi, ...).

FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libhdf5-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep crates and build outputs between image builds; the binaries are copied
# out of them within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p coordinator -p worker \
 && install -D -m 0755 -t /out/bin target/release/coordinator target/release/worker

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libhdf5-103-1 libstdc++6 ffmpeg \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 anvil \
 && useradd --uid 10001 --gid anvil --home-dir /anvil --no-create-home \
      --shell /usr/sbin/nologin anvil \
 && install -d -o anvil -g anvil -m 0755 /anvil
COPY --from=build /out/bin/ /usr/local/bin/
# `coordinator data wait --seed /opt/anvil` copies these onto the volume when a config names
# them (data/pbmc68k_counts.h5ad is the quickstart's data, data/minimal_instance.pkg.slp the
# pose examples').
COPY configs/*.yaml /opt/anvil/configs/
COPY data/pbmc68k_counts.h5ad data/minimal_instance.pkg.slp /opt/anvil/data/
USER 10001:10001
WORKDIR /anvil
CMD ["coordinator", "--help"]
