# The kube-ssh-tunnel daemon image, built one of two ways:
# - default (multi-stage, for a machine that can pull a Rust image): stage `build` compiles the
#   release binary in RUST_IMAGE; stage `runtime` is a plain Debian (BASE_IMAGE, which may be a
#   locally imported image where no registry is reachable) with just the binary.
# - `--target prebuilt`: the same image around a binary built beforehand on a compatible
#   glibc (BINARY, default target/release/kube-ssh-tunnel: run `cargo build --release`
#   first). No Rust image is needed; tests/compose.rs builds the compose `tunnel` this way.
ARG RUST_IMAGE=rust:1-bookworm
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS prebuilt
ARG BINARY=target/release/kube-ssh-tunnel
COPY ${BINARY} /usr/local/bin/kube-ssh-tunnel
# The CONNECT and admin sockets live here; share it with kube-apiserver.
VOLUME /run/kube-ssh-tunnel
ENTRYPOINT ["/usr/local/bin/kube-ssh-tunnel"]
CMD ["--help"]

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin kube-ssh-tunnel \
 && cp target/release/kube-ssh-tunnel /usr/local/bin/kube-ssh-tunnel

FROM ${BASE_IMAGE} AS runtime
COPY --from=build /usr/local/bin/kube-ssh-tunnel /usr/local/bin/kube-ssh-tunnel
VOLUME /run/kube-ssh-tunnel
ENTRYPOINT ["/usr/local/bin/kube-ssh-tunnel"]
CMD ["--help"]
