# vip-operator container image.
#   docker build -t ghcr.io/vip-operator/vip-operator:0.1.0 .
# Builder: Debian bookworm, so the binary links against the same glibc (2.36) as the runtime.
# Runtime: distroless cc (glibc, libgcc, CA certificates for the Huawei Cloud endpoints and the
# Kubernetes API), no shell, running as the distroless "nonroot" user 65532, which the Helm
# chart's securityContext also sets (runAsUser 65532, readOnlyRootFilesystem).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin vip-operator \
    && install -m 0755 target/release/vip-operator /vip-operator

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="vip-operator" \
      org.opencontainers.image.description="Kubernetes operator that binds Huawei Cloud ECS virtual IPs to server NICs (VipBinding CRD)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=builder /vip-operator /vip-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/vip-operator"]
CMD ["run"]
