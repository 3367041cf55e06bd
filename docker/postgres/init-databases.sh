#!/bin/bash
# First start only (docker-entrypoint-initdb.d): one database per name in $CATSDOGS_DATABASES
# (comma-separated; compose sets airflow,mlflow,monitoring), owned by $POSTGRES_USER.
set -euo pipefail
IFS=',' read -ra names <<<"${CATSDOGS_DATABASES:-airflow,mlflow}"
for db in "${names[@]}"; do
  echo "creating database $db"
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -c "CREATE DATABASE \"$db\" OWNER \"$POSTGRES_USER\""
done
