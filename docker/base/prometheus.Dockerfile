# A stand-in for prom/prometheus built from Debian's prometheus package, for hosts without Docker Hub.
# Same interface: entrypoint prometheus, config /etc/prometheus/prometheus.yml, data /prometheus.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown nobody:nogroup /prometheus
USER nobody
EXPOSE 9090
WORKDIR /prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
