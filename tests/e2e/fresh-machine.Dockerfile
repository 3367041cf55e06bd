# The fresh-machine check's machine (tests/e2e/test_fresh_machine.py): the project's bare Debian 12
# root file system (debootstrap minbase, scripts/docker-base-images.sh debian) plus exactly the
# README's prerequisites, python3.11 and make. Everything else must come from `make demo` itself.
ARG DEBIAN_IMAGE=catsdogs-base/debian:bookworm
FROM ${DEBIAN_IMAGE}
ENV LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 make \
 && apt-get clean && rm -rf /var/lib/apt/lists/*
