# The reverse proxy in front of the Bento blue/green pair, from Debian's nginx package (no Docker
# Hub needed). Config: docker/proxy/nginx.conf; the live route: /etc/nginx/catsdogs/route.conf
# (a named volume, rewritten by the deploy stage, then `nginx -s reload`).
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light curl \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && rm -f /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 8080
CMD ["nginx", "-g", "daemon off;"]
