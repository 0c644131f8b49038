"""A real, small Airflow (API server, scheduler, DAG processor) in a throwaway home, for end-to-end tests."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import psycopg2
import psycopg2.extras

from pipeline import db
from pipeline.settings import PROJECT_ROOT

LOGGER = logging.getLogger(__name__)

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
COMPONENTS = ("api-server", "scheduler", "dag-processor")
FINISHED_STATES = frozenset({"success", "failed"})
POLL_SECONDS = 1.0
STOP_SECONDS = 20.0
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class DagRunRow:
    """One DAG run as the metadata database holds it."""

    run_id: str
    run_type: str
    state: str
    logical_date: datetime | None
    data_interval_start: datetime | None
    data_interval_end: datetime | None


class ClusterError(RuntimeError):
    """The cluster did not come up, a component died, or runs did not finish in time."""


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_env(home: Path, metadata_url: str, port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every Airflow process of the cluster shares (the CLI included)."""
    python_path = [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_url,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",  # CI machines have two cores, shared with other jobs
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        # the scheduler signs the task tokens the API server checks: both must share the secret
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "true",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, python_path)),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    env.pop("AIRFLOW_CONN_NEWS_DB", None)  # the caller's NEWS_DATABASE_URL decides which news database
    env.update(extra or {})
    return env


class AirflowCluster:
    """Handle on a running cluster: the CLI with the cluster's environment, and waits on the metadata DB."""

    def __init__(self, home: Path, env: dict[str, str], metadata_dsn: str) -> None:
        self.home = home
        self.env = env
        self.metadata_dsn = metadata_dsn
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}

    def cli(self, *args: str, timeout: float = 180) -> str:
        """Run `airflow <args>` with the cluster's environment; returns stdout, raises with the output on failure."""
        started = time.monotonic()
        done = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout,
                              check=False)
        LOGGER.info("airflow %s: exit %d in %.1f s", " ".join(args), done.returncode, time.monotonic() - started)
        with (self.home / "cli.log").open("a", encoding="utf-8") as log:
            log.write(f"$ airflow {' '.join(args)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            raise ClusterError(f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}"
                               f"\n{done.stderr[-3000:]}")
        return done.stdout

    def unpause(self, dag_id: str) -> None:
        self.cli("dags", "unpause", dag_id)

    def backfill(self, dag_id: str, from_date: str, to_date: str, reprocess_behavior: str | None = None,
                 conf: Mapping[str, Any] | None = None) -> int:
        """`airflow backfill create` over [from_date, to_date] (logical dates, inclusive); returns the backfill id.
        The runs are only queued: the scheduler picks them up (while the DAG is unpaused)."""
        self.wait_for_backfills_closed(dag_id)
        args = ["backfill", "create", "--dag-id", dag_id, "--from-date", from_date, "--to-date", to_date]
        if reprocess_behavior:
            args += ["--reprocess-behavior", reprocess_behavior]
        if conf is not None:
            args += ["--dag-run-conf", json.dumps(dict(conf))]
        self.cli(*args)
        row = self._query("SELECT max(id) AS id FROM backfill WHERE dag_id = %s", (dag_id,))[0]
        if row["id"] is None:
            raise ClusterError(f"airflow backfill create made no backfill of {dag_id}")
        return int(row["id"])

    def wait_for_runs(self, dag_id: str, count: int, timeout: float = 300,
                      backfill_id: int | None = None) -> list[DagRunRow]:
        """Wait until the DAG (or one backfill of it) has `count` runs or more and all of them have finished;
        returns them by logical date."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            runs = self.runs(dag_id, backfill_id)
            if len(runs) >= count and all(run.state in FINISHED_STATES for run in runs):
                return runs
            if time.monotonic() > deadline:
                raise ClusterError(f"runs of {dag_id} not finished after {timeout:.0f} s: {runs}")
            time.sleep(POLL_SECONDS)

    def wait_for_backfills_closed(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until no backfill of the DAG is open. Airflow allows one at a time, and the scheduler marks a
        backfill complete only on a 30-second timer after its last run finished."""
        deadline = time.monotonic() + timeout
        while self._query("SELECT id FROM backfill WHERE dag_id = %s AND completed_at IS NULL", (dag_id,)):
            self.check_alive()
            if time.monotonic() > deadline:
                raise ClusterError(f"a backfill of {dag_id} is still open after {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def runs(self, dag_id: str, backfill_id: int | None = None) -> list[DagRunRow]:
        """The DAG's runs (those of one backfill, when given), by logical date."""
        query = ("SELECT r.run_id, r.run_type, r.state, r.logical_date, r.data_interval_start, r.data_interval_end "
                 "FROM dag_run AS r WHERE r.dag_id = %s")
        params: tuple[Any, ...] = (dag_id,)
        if backfill_id is not None:
            query += " AND r.id IN (SELECT dag_run_id FROM backfill_dag_run WHERE backfill_id = %s)"
            params += (backfill_id,)
        return [DagRunRow(**row) for row in self._query(query + " ORDER BY r.logical_date", params)]

    def wait_until_parsed(self, dag_id: str, timeout: float = 180) -> None:
        """Wait until the DAG processor has serialized the DAG; fail at once on an import error."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            errors = self._query("SELECT filename, stacktrace FROM import_error", ())
            if errors:
                raise ClusterError("DAG import errors:\n" + "\n".join(f"{e['filename']}: {e['stacktrace']}"
                                                                       for e in errors))
            if self._query("SELECT 1 FROM serialized_dag WHERE dag_id = %s", (dag_id,)):
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{dag_id} was not parsed within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def wait_for_api(self, timeout: float = 120) -> None:
        """Wait until the API server answers its health check (tasks report through its Execution API)."""
        url = self.env["AIRFLOW__API__BASE_URL"] + "/api/v2/monitor/health"
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ClusterError(f"the API server did not answer {url} within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def start(self, component: str) -> None:
        log_path = self.home / f"{component}.log"
        log: IO[bytes] = log_path.open("wb")
        # a session of its own, so stopping signals the component's whole process group (workers, uvicorn)
        self.processes[component] = subprocess.Popen([AIRFLOW, component], env=self.env, stdout=log,
                                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.logs[component] = log_path

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise ClusterError(f"airflow {name} exited with {process.returncode}")

    def stop(self) -> None:
        """SIGTERM every component's process group, then SIGKILL what is left after a grace period."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                LOGGER.warning("airflow component %d ignored SIGTERM; killing its group", process.pid)
            _signal_group(process, signal.SIGKILL)  # also any worker the component left behind
            process.wait(timeout=STOP_SECONDS)

    def log_tails(self) -> str:
        """The last lines of every component's log, of the CLI log and of each failed task's log, for a
        failure report."""
        paths = [*self.logs.values(), self.home / "cli.log"]
        try:
            failed = self._query("SELECT dag_id, run_id, task_id FROM task_instance WHERE state = 'failed'", ())
        except psycopg2.Error:  # not migrated yet
            failed = []
        for ti in failed:
            run_dir = self.home / "logs" / f"dag_id={ti['dag_id']}" / f"run_id={ti['run_id']}"
            paths += sorted(run_dir.glob(f"task_id={ti['task_id']}/**/attempt=*.log"))
        parts = []
        for path in paths:
            if path.exists():
                lines = path.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
                parts.append(f"===== {path} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)

    def _query(self, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        connection = psycopg2.connect(self.metadata_dsn)
        try:
            with connection.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
                cursor.execute(query, params)
                return [dict(row) for row in cursor.fetchall()]
        finally:
            connection.close()


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with suppress(ProcessLookupError):  # the group is gone already
        os.killpg(process.pid, signum)


@contextmanager
def airflow_cluster(home: Path, metadata_dsn: str, dag_id: str, env: Mapping[str, str] | None = None,
                    ) -> Iterator[AirflowCluster]:
    """Migrate an empty PostgreSQL database `metadata_dsn` (libpq URL) as Airflow's metadata, start the API
    server, scheduler and DAG processor with `home` as AIRFLOW_HOME and `env` on top, and yield once `dag_id`
    is parsed. Everything is stopped on the way out; an error inside the `with` block (an assertion too) prints
    the log tails first, so use it in the test body rather than in a fixture, whose teardown never sees one."""
    home.mkdir(parents=True, exist_ok=True)
    metadata_url = db.normalise_url(metadata_dsn)  # the SQLAlchemy form Airflow reads; psycopg2 takes the other
    cluster = AirflowCluster(home, cluster_env(home, metadata_url, free_port(), env), metadata_dsn)
    started = time.monotonic()
    try:
        cluster.cli("db", "migrate", timeout=300)
        LOGGER.info("metadata database migrated in %.1f s", time.monotonic() - started)
        for component in COMPONENTS:
            cluster.start(component)
        cluster.wait_for_api()
        cluster.wait_until_parsed(dag_id)
        LOGGER.info("cluster up, %s parsed, %.1f s after start", dag_id, time.monotonic() - started)
        yield cluster
    except BaseException:
        print(cluster.log_tails(), file=sys.stderr)
        raise
    finally:
        cluster.stop()
