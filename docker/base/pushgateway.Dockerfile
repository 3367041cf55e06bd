# A stand-in for prom/pushgateway built from Debian's prometheus-pushgateway package, for hosts
# without Docker Hub. Same interface: port 9091.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-pushgateway wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/prometheus-pushgateway /bin/pushgateway
USER nobody
EXPOSE 9091
ENTRYPOINT ["/usr/bin/prometheus-pushgateway"]
