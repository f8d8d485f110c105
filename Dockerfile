# The `ticketing` binary on a slim Debian. Build: docker build -t ticketing .
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p ticketing-cli --bin ticketing

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 ticketing
COPY --from=build /src/target/release/ticketing /usr/local/bin/ticketing
USER ticketing
ENTRYPOINT ["ticketing"]
