# gemini-flux: build with the official Rust image, run on distroless as non-root.
#   docker build -t gemini-flux .
#   docker run -p 8000:8000 --env-file .env -v flux-data:/data gemini-flux

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own, so that a code change does not
# rebuild them: compile once against empty sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src/bin/flux-bench benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > src/bin/flux-bench/main.rs \
    && echo 'fn main() {}' > benches/plan.rs \
    && cargo build --release --locked --bin gemini-flux \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin gemini-flux \
    && mkdir -p /data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/gemini-flux /usr/local/bin/gemini-flux
# The state volume belongs to the non-root user the image runs as.
COPY --from=build --chown=nonroot:nonroot /data /data
ENV FLUX_BIND=0.0.0.0:8000 \
    FLUX_STATE_PATH=/data/gemini-flux.db
VOLUME ["/data"]
EXPOSE 8000
USER nonroot
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/gemini-flux", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/gemini-flux"]
CMD ["serve"]
