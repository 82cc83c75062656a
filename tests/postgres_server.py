"""A real PostgreSQL server for the tests: Debian's postgresql binaries, `initdb` into a
temporary folder as a non-root user (the `postgres` account when the tests run as root), and
`pg_ctl` on a free port. Fast and unsafe settings (no fsync): its data is thrown away."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

from chronoprice.testing.harness import free_port

USER = "chronoprice"
PASSWORD = "s3cret-test-password"


def _binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if not found:
        raise RuntimeError(f"{name} not found: install Debian's postgresql package (.ci/run does)")
    return found


class PostgresServer:
    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="chronoprice-pg-"))
        self.data, self.port = self.folder / "data", free_port()
        self._as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as_owner:
            shutil.chown(self.folder, "postgres")
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD)
        if self._as_owner:
            shutil.chown(password_file, "postgres")
        self._run(_binary("initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(password_file), "-A", "scram-sha-256",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, *command: str) -> None:
        subprocess.run([*self._as_owner, *command], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "start")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def stop(self) -> None:
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"create database {name}")
        return self.url(name)

    def remove(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
