# What every project image (catsdogs-airflow, catsdogs-mlflow, catsdogs-worker) shares, written
# once: Python/pip/uv settings, the optional extra CA certificates (TLS-intercepting proxies:
# docker/ca-certificates/*.crt, copied from the host by scripts/docker-ca.sh) trusted by pip, uv,
# requests and OpenSSL, and uv. Built first by scripts/docker-images.sh as catsdogs-python-base.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt UV_NATIVE_TLS=1 UV_NO_CACHE=1 \
    UV_SYSTEM_PYTHON=1 UV_BREAK_SYSTEM_PACKAGES=1 UV_COMPILE_BYTECODE=0
COPY docker/ca-certificates/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null
# uv installs the packages (parallel downloads and unpacking: several times faster than pip).
ARG UV_VERSION=0.13.4
RUN pip install -q "uv==$UV_VERSION"
