# A stand-in for prom/alertmanager built from Debian's prometheus-alertmanager package, for hosts
# without Docker Hub. Same interface: config /etc/alertmanager/alertmanager.yml, data /alertmanager.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus-alertmanager wget \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /alertmanager && chown nobody:nogroup /alertmanager \
 && ln -s /usr/bin/prometheus-alertmanager /bin/alertmanager
USER nobody
EXPOSE 9093
WORKDIR /alertmanager
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]
