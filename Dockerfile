# The `ticketing` binary on a slim Debian (docker-compose.yml runs every service from it).
# Build: docker build -t ticketing .   (.dockerignore keeps target/ and cluster/ out)
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ticketing-cli --bin ticketing

FROM debian:bookworm-slim
# CA roots for partner webhooks over HTTPS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --user-group --no-create-home ticketing
COPY --from=build /src/target/release/ticketing /usr/local/bin/ticketing
# Compose sets `user:` to the owner of cluster/ (setup --compose writes it in .env).
USER 10001:10001
ENTRYPOINT ["ticketing"]
