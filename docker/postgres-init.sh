#!/usr/bin/env bash
# Creates the Airflow metadata database and the news database, each owned by its own login role.
#
# The official postgres image runs this once, on the first start of an empty data volume, as the
# superuser. Passwords come from AIRFLOW_DB_PASSWORD and NEWS_DB_PASSWORD (see docker-compose.yml);
# changing them later needs ALTER ROLE by hand or a fresh volume (`docker compose down -v`).
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD must be set}"
: "${NEWS_DB_PASSWORD:?NEWS_DB_PASSWORD must be set}"

# psql variables (:'name') quote the passwords as literals, so any character is safe in them.
psql --no-psqlrc --set ON_ERROR_STOP=1 \
    --username "$POSTGRES_USER" --dbname "${POSTGRES_DB:-$POSTGRES_USER}" \
    --set airflow_password="$AIRFLOW_DB_PASSWORD" \
    --set news_password="$NEWS_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;

CREATE ROLE news LOGIN PASSWORD :'news_password';
CREATE DATABASE news OWNER news;
REVOKE ALL ON DATABASE news FROM PUBLIC;
SQL
