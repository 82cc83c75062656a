"""A real PgBouncer in front of the tests' PostgreSQL server: Debian's pgbouncer binary, in
transaction mode with a server pool smaller than the clients' pools, run as the `postgres`
account when the tests run as root (PgBouncer refuses to run as root)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psycopg

from chronoprice.testing.harness import free_port
from tests.postgres_server import PASSWORD, USER, PostgresServer

SERVER_POOL = 3  # server connections a database gets, whatever the clients open


def _binary() -> str:
    found = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None)
    if not found:
        raise RuntimeError("pgbouncer not found: install Debian's pgbouncer package (.ci/run does)")
    return found


class PgBouncer:
    def __init__(self, postgres: PostgresServer, connect_query: str = "SET statement_timeout = 5000"):
        self.folder, self.port = postgres.folder / f"bouncer-{free_port()}", free_port()
        self.folder.mkdir()
        as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        (self.folder / "userlist.txt").write_text(f'"{USER}" "{PASSWORD}"\n')
        (self.folder / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = host=127.0.0.1 port={postgres.port} connect_query='{connect_query}'",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = scram-sha-256",
                    f"auth_file = {self.folder}/userlist.txt",
                    "pool_mode = transaction",
                    f"default_pool_size = {SERVER_POOL}",
                    "max_client_conn = 200",
                    "query_wait_timeout = 5",
                    "server_login_retry = 1",
                    f"logfile = {self.folder}/log",
                    f"pidfile = {self.folder}/pid",
                    "",
                ]
            )
        )
        if as_owner:
            for path in (self.folder, *self.folder.iterdir()):
                shutil.chown(path, "postgres")
        subprocess.run(
            [*as_owner, _binary(), "-d", str(self.folder / "pgbouncer.ini")],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + 30
        while not (self.folder / "pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def url(self, direct_url: str) -> str:
        """The URL of the database `direct_url` names, through the bouncer."""
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{direct_url.rsplit('/', 1)[1]}"

    def server_connections(self, direct_url: str) -> int:
        """Connections PostgreSQL holds for the database (the bouncer's, and nobody else's)."""
        database = direct_url.rsplit("/", 1)[1]
        with psycopg.connect(direct_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as connection:
            return connection.execute(
                "select count(*) from pg_stat_activity where datname = %s", [database]
            ).fetchone()[0]

    def stop(self) -> None:
        pid = self.folder / "pid"
        if pid.exists():
            os.kill(int(pid.read_text().strip()), signal.SIGTERM)
