# A stand-in for the official redis image built from Debian's redis-server package, for hosts
# without Docker Hub. Same interface: `redis-server` on 6379, data in /data, `redis-cli` inside.
# Airflow's CeleryExecutor uses it as the broker (the task queues), nothing else.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
USER redis
EXPOSE 6379
WORKDIR /data
# Debian's /etc/redis/redis.conf binds to loopback and daemonizes: start from the defaults instead.
CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"]
