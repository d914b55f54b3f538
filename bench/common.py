"""What every benchmark script needs to run a server beside its load (shared by bench/*.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Ask a server to stop; kill it if it has not within 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scratch_postgres(url: str, prefix: str = "cityos_bench") -> tuple[str, Callable[[], None]]:
    """A throw-away database on the PostgreSQL server at `url`, and the function that drops it."""
    import secrets

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    parsed = make_url(url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return parsed.set(database=name).render_as_string(hide_password=False), drop


def serve_cityos(url: str, data_dir: Path, secret: str = "bench-secret-key-0123456789",
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """`cityos serve` on a free port over `url` (no MQTT), logging to data_dir/serve.log; returns
    the process and its base URL once /healthz answers (at most 60 s)."""
    import httpx

    port = free_port()
    env = {**os.environ, "CITYOS_DATABASE_URL": url, "CITYOS_DATA_DIR": str(data_dir),
           "CITYOS_SECRET_KEY": secret, "CITYOS_ENVIRONMENT": "test",
           "CITYOS_LOG_LEVEL": "WARNING", "CITYOS_CONFIG": str(data_dir / "none.toml"),
           # every benchmark's load comes from one loopback address: measure the work, not the limiter
           "CITYOS_RATE_LIMIT_ENABLED": os.environ.get("CITYOS_RATE_LIMIT_ENABLED", "false")}
    env.pop("CITYOS_MQTT_URL", None)
    log = (data_dir / "serve.log").open("wb")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", "from cityos.cli import main; main()", "serve",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: see {data_dir / 'serve.log'}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop(proc)
    raise SystemExit("server did not start within 60 s")


def on_database(postgres: str | None, name: str, run: Callable[[str, str, Path], None]) -> None:
    """`run(label, database URL, work folder)` on a scratch PostgreSQL database beside `postgres`
    (dropped afterwards) or, without it, on a SQLite file; the work folder is removed after."""
    with tempfile.TemporaryDirectory(prefix=name.replace("_", "-") + "-") as tmp:
        if postgres:
            url, drop = scratch_postgres(postgres, name)
            try:
                run("PostgreSQL", url, Path(tmp))
            finally:
                drop()
        else:
            run("SQLite (WAL)", f"sqlite:///{Path(tmp) / 'cityos.db'}", Path(tmp))
