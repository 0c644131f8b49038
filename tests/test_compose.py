"""The docker-compose stack and its image are wired as documented (offline: no Docker engine needed)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INIT_SCRIPT = ROOT / "docker" / "postgres-init.sh"

AIRFLOW_SERVICES = (
    "airflow-init",
    "airflow-api-server",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
LONG_RUNNING_AIRFLOW_SERVICES = tuple(name for name in AIRFLOW_SERVICES if name != "airflow-init")
# `${NAME:-default}`, `${NAME-default}` or `${NAME}`, as Compose interpolates them.
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?::?-(?P<default>[^}]*))?\}")


def interpolate_defaults(value: str) -> str:
    """Replace Compose variables by their defaults, as `docker compose` does with an empty environment."""
    return VARIABLE.sub(lambda match: match.group("default") or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def test_stack_has_postgres_and_every_airflow_component(services: dict[str, Any]) -> None:
    assert {"postgres", *AIRFLOW_SERVICES} <= set(services)


def test_postgres_is_checked_with_pg_isready_and_keeps_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    postgres = services["postgres"]
    assert re.fullmatch(r"postgres:1[78](\.\d+)?", postgres["image"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    named_volumes = set(compose.get("volumes") or {})
    data_sources = {str(volume).split(":", 1)[0] for volume in postgres["volumes"]}
    assert data_sources & named_volumes


def test_postgres_init_script_creates_both_databases_with_their_own_roles(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    mounts = [str(volume).split(":") for volume in postgres["volumes"]]
    init_mounts = [m for m in mounts if m[1].startswith("/docker-entrypoint-initdb.d/")]
    assert init_mounts, "no script mounted into /docker-entrypoint-initdb.d"
    assert (ROOT / init_mounts[0][0]).resolve() == INIT_SCRIPT
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    for database in ("airflow", "news"):
        assert f"CREATE ROLE {database} LOGIN" in script
        assert f"CREATE DATABASE {database} OWNER {database}" in script
    env = environment_of(postgres)
    assert env["NEWS_DB_PASSWORD"] == "${NEWS_DB_PASSWORD:-news}"
    assert env["AIRFLOW_DB_PASSWORD"] == "${AIRFLOW_DB_PASSWORD:-airflow}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_runs_the_project_image(services: dict[str, Any], name: str) -> None:
    service = services[name]
    build = service.get("build")
    context = build if isinstance(build, str) else (build or {}).get("context")
    assert context in (".", "./"), f"{name} does not build the repository's Dockerfile"
    assert service.get("image") == services["airflow-scheduler"]["image"]


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_uses_local_executor_and_the_airflow_database(
    services: dict[str, Any], name: str
) -> None:
    env = environment_of(services[name])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    metadata = urlsplit(interpolate_defaults(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]))
    assert metadata.scheme == "postgresql+psycopg2"
    assert (metadata.hostname, metadata.path) == ("postgres", "/airflow")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-api-server:8080/execution/"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"].startswith("${AIRFLOW_JWT_SECRET")
    assert env["AIRFLOW__CORE__FERNET_KEY"].startswith("${AIRFLOW_FERNET_KEY")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_news_db_connection_points_at_the_news_database(services: dict[str, Any], name: str) -> None:
    env = environment_of(services[name])
    assert env["AIRFLOW_CONN_NEWS_DB"] == "postgresql://news:${NEWS_DB_PASSWORD:-news}@postgres:5432/news"
    url = urlsplit(interpolate_defaults(env["AIRFLOW_CONN_NEWS_DB"]))
    assert (url.scheme, url.username, url.hostname, url.port, url.path) == (
        "postgresql",
        "news",
        "postgres",
        5432,
        "/news",
    )
    assert env["NEWS_SCHEDULE"].startswith("${NEWS_SCHEDULE:-")
    assert env["NEWS_USER_AGENT"].startswith("${NEWS_USER_AGENT:-")


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_service_waits_for_a_healthy_postgres(services: dict[str, Any], name: str) -> None:
    assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", LONG_RUNNING_AIRFLOW_SERVICES)
def test_airflow_component_starts_after_migrations_succeed(services: dict[str, Any], name: str) -> None:
    service = services[name]
    assert service["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in service


def test_airflow_components_run_their_own_commands(services: dict[str, Any]) -> None:
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands["airflow-init"] == ["airflow", "db", "migrate"]
    assert services["airflow-init"].get("restart", "no") == "no", "the migration job must run once"
    assert commands["airflow-api-server"][:2] == ["airflow", "api-server"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]


def test_api_server_publishes_port_8080(services: dict[str, Any]) -> None:
    ports = [str(port) for port in services["airflow-api-server"]["ports"]]
    assert any(port.endswith(":8080") for port in ports)


def test_dockerfile_installs_requirements_under_constraints_as_a_non_root_user() -> None:
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    install = re.search(r"^RUN pip install .*$", dockerfile, re.MULTILINE)
    assert install, "no `RUN pip install` line"
    assert "-r requirements.txt" in install.group(0)
    assert "-c constraints.txt" in install.group(0)
    for copied in ("pipeline/", "dags/", "sql/", "config/", "demo/", "pyproject.toml"):
        assert re.search(rf"^COPY {re.escape(copied)}", dockerfile, re.MULTILINE), copied
    assert "AIRFLOW_HOME=/opt/airflow" in dockerfile
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user and user[-1] not in ("root", "0")


def test_dockerignore_keeps_local_state_out_of_the_build_context() -> None:
    ignored = set(DOCKERIGNORE.read_text(encoding="utf-8").split())
    assert {".venv", ".data", ".git", "bench/results"} <= ignored


def test_compose_file_validates_with_docker_compose() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not on PATH (Debian: apt-get install docker-compose)")
    result = subprocess.run(
        [tool, "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
