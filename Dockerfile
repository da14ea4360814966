# Image of the pg-model-proxy.
#
#   docker build -t pg-model-proxy .
#   docker run -p 6432:6432 -e PGMP_UPSTREAM='postgresql://db.example:5432/?sslmode=require' pg-model-proxy
#
# Every flag of `pg-model-proxy --help` can be given after the image name or as its
# PGMP_* environment variable. See docker-compose.yml for the proxy in front of PostgreSQL.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# README.m[d]: a wildcard, so the build works whether or not README.md exists yet
# (pyproject.toml names it as the readme; setuptools only warns when it is missing).
COPY pyproject.toml README.m[d] ./
COPY proxy/ ./proxy/
COPY sqlfuncs/ ./sqlfuncs/

RUN pip install --no-cache-dir . \
    && rm -rf build ./*.egg-info

# A non-root user (the embedded PostgreSQL, used when PGMP_UPSTREAM is unset, refuses to run
# as root), with a data directory it owns for that embedded server.
RUN useradd --create-home --uid 10001 --user-group proxy \
    && install -d -o proxy -g proxy /var/lib/pg-model-proxy
USER 10001:10001

ENV PGMP_LISTEN=0.0.0.0:6432 \
    PGMP_DATA_DIR=/var/lib/pg-model-proxy/pgdata

EXPOSE 6432

# Healthy when the proxy's port accepts TCP connections (the port is read from PGMP_LISTEN).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, socket; port = os.environ.get('PGMP_LISTEN', '0.0.0.0:6432').rpartition(':')[2]; socket.create_connection(('127.0.0.1', int(port)), 2).close()"]

# The proxy shuts down gracefully on SIGTERM, giving running statements up to
# PGMP_SHUTDOWN_TIMEOUT (30 s) to finish: allow for it with `docker stop -t 35`.
ENTRYPOINT ["pg-model-proxy"]
