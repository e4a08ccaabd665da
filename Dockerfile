# hotlead container image: a release build on Debian bookworm.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY src src
COPY bench/hotlead_bench.rs bench/hotlead_bench.rs
RUN cargo build --release --locked --bin hotlead

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 hotlead
COPY --from=build /src/target/release/hotlead /usr/local/bin/hotlead
COPY examples /etc/hotlead/examples
USER hotlead
# Listening beyond loopback, `hotlead run` needs the read API's token
# (HOTLEAD_HTTP__TOKEN or http.token_file), or HOTLEAD_HTTP__ALLOW_ANONYMOUS=true.
ENV HOTLEAD_RULES__PATH=/etc/hotlead/examples/rules.yaml \
    HOTLEAD_HTTP__LISTEN=0.0.0.0:9464
EXPOSE 9464
ENTRYPOINT ["hotlead"]
CMD ["run"]
