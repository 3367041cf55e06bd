# A stand-in for python:3.11-slim built from Debian packages, for hosts without Docker Hub.
# Built by scripts/docker-base-images.sh on top of a debootstrap root file system.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip ca-certificates \
 && update-ca-certificates \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python \
 && ln -sf /usr/bin/python3.11 /usr/local/bin/python3 \
 && ln -sf /usr/bin/pip3 /usr/local/bin/pip \
 && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
