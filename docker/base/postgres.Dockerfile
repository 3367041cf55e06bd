# A stand-in for postgres:16 built from Debian's postgresql-15, for hosts without Docker Hub.
# Same interface as the official image: POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA,
# /docker-entrypoint-initdb.d/*.sh|*.sql on first start, data in /var/lib/postgresql/data.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PGDATA=/var/lib/postgresql/data \
    PATH=/usr/lib/postgresql/15/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
 && apt-get clean && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql \
 && chmod 700 /var/lib/postgresql/data
COPY docker/base/postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
