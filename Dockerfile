# The kube-ssh-tunnel daemon image. Stage 1 builds the release binary with a Rust toolchain
# image (RUST_IMAGE); stage 2 is a plain Debian (BASE_IMAGE, which may be a locally imported
# image where no registry is reachable) with just the binary.
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin kube-ssh-tunnel \
 && cp target/release/kube-ssh-tunnel /usr/local/bin/kube-ssh-tunnel

FROM ${BASE_IMAGE}
COPY --from=build /usr/local/bin/kube-ssh-tunnel /usr/local/bin/kube-ssh-tunnel
# The CONNECT and admin sockets live here; share it with kube-apiserver.
VOLUME /run/kube-ssh-tunnel
ENTRYPOINT ["/usr/local/bin/kube-ssh-tunnel"]
CMD ["--help"]
