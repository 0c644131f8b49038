# The news-ingest image: Airflow 3 plus the pipeline library, its DAG, migrations and config.
# Built by docker-compose.yml; every Airflow service runs this one image with a different command.
FROM python:3.11-slim

ARG AIRFLOW_UID=50000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    PYTHONPATH=/opt/news-ingest

RUN useradd --uid "${AIRFLOW_UID}" --user-group --home-dir /opt/airflow --create-home \
        --shell /usr/sbin/nologin airflow

WORKDIR /opt/news-ingest

# Dependencies first, in their own layer, so code edits do not reinstall them.
COPY requirements.txt constraints.txt ./
RUN pip install --no-cache-dir -r requirements.txt -c constraints.txt

COPY pyproject.toml ./
COPY pipeline/ pipeline/
COPY dags/ dags/
COPY sql/ sql/
COPY config/ config/
COPY demo/ demo/

# Code stays root-owned and read-only; only Airflow's home (logs, auth file) is writable.
RUN mkdir -p /opt/airflow/logs /opt/airflow/auth \
    && chown -R airflow:airflow /opt/airflow

USER airflow
EXPOSE 8080

CMD ["airflow", "version"]
