# The reverse proxy in front of the Bento blue/green pair: Debian's HAProxy (no Docker Hub needed),
# with socat, which the deploy stage runs in it (`docker exec`) to speak to HAProxy's runtime API.
# Config: docker/proxy/haproxy.cfg; the live colour: /var/lib/haproxy/routes/route.map (a named
# volume, written by the deploy stage, then set at run time: no reload).
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends haproxy socat curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /run/haproxy /var/lib/haproxy/routes
EXPOSE 8080
CMD ["haproxy", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
