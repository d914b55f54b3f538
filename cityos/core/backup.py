"""Backup and restore (备份与恢复): a consistent snapshot of the database and the keyring.

A backup file is a tar.gz of three members:

- `manifest.json`: CityOS version, Alembic revision, database backend, `created_at` (UTC), the
  row count and a content digest of every table, and the sha256 of each other member;
- `database.sqlite` (SQLite: a snapshot through the online backup API, never a file copy, so it
  is consistent while the server writes) or `database.pgdump` (PostgreSQL: `pg_dump
  --format=custom`, run under a snapshot exported from the transaction that also counts the
  rows, so the manifest describes exactly what was dumped);
- `keys.json`: the keyring.

**A backup file is secret.** Without keys.json the encrypted columns (ID numbers, phone numbers)
cannot be read back, so it travels inside the backup, and with it anyone holding the file can
read them. It is written with mode 0600; keep it like the keyring itself (encrypted storage, few
readers) and destroy old copies when they are no longer needed.

Restore reads the archive, checks the manifest and every member's checksum before touching
anything, refuses a backup of the other backend or of a schema newer than the code, replaces the
database (SQLite: a temp file then an atomic rename, stale -wal/-shm removed; PostgreSQL:
`pg_restore --clean --if-exists --no-owner` in one transaction), checks the restored tables
against the manifest, and finally puts keys.json in place, keeping the current one as
keys.json.bak-<timestamp>. Stop the server first: a running process keeps its keyring in memory
and, on SQLite, its open connections on the replaced file.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, MetaData, create_engine, inspect, select, text
from sqlalchemy.engine import make_url

import cityos
from cityos.core import access, audit, crypto, db
from cityos.core.access import Actor
from cityos.core.settings import Settings

access.define("backup.create", "Take a backup of the database and keyring (备份)")
access.define("backup.restore", "Replace the database and keyring from a backup (恢复)")

FORMAT = 1
MANIFEST = "manifest.json"
KEYS = "keys.json"
DB_MEMBER = {"sqlite": "database.sqlite", "postgresql": "database.pgdump"}
MEMBERS = {MANIFEST, KEYS, *DB_MEMBER.values()}
# PostGIS's reference table belongs to the extension: pg_restore recreates it with the extension.
FOREIGN_TABLES = {"spatial_ref_sys"}

Report = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class BackupError(Exception):
    """A backup could not be taken, or a backup file is unusable here; nothing was changed."""


@dataclass
class TableStat:
    rows: int
    sha256: str


@dataclass
class Manifest:
    """What a backup holds, and the checksums that prove it arrived intact."""

    backend: str
    alembic_revision: str | None
    created_at: str
    tables: dict[str, TableStat]
    members: dict[str, str] = field(default_factory=dict)  # name -> sha256
    cityos_version: str = cityos.__version__
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            body = json.loads(raw)
            if body.get("format") != FORMAT:
                raise BackupError(f"backup format {body.get('format')!r} is not {FORMAT}")
            return cls(
                backend=str(body["backend"]),
                alembic_revision=body["alembic_revision"],
                created_at=str(body["created_at"]),
                tables={k: TableStat(int(v["rows"]), str(v["sha256"]))
                        for k, v in body["tables"].items()},
                members={str(k): str(v) for k, v in body["members"].items()},
                cityos_version=str(body["cityos_version"]),
                format=int(body["format"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BackupError(f"manifest.json is unreadable: {exc}") from None


# -- table statistics -------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def table_names(conn: Connection) -> list[str]:
    """The tables a backup covers: every table of the default schema but extensions' own.

    SQLite virtual tables (the map's R*Tree) and their shadow tables are indexes derived from
    other tables: the file copy carries them, the manifest counts only the data they index."""
    names = inspect(conn).get_table_names()
    if conn.dialect.name == "sqlite":
        virtual = [str(r[0]) for r in conn.exec_driver_sql(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'")]
        names = [n for n in names if not any(n == v or n.startswith(v + "_") for v in virtual)]
    return sorted(n for n in names if n not in FOREIGN_TABLES)


def table_stats(conn: Connection, names: list[str] | None = None) -> dict[str, TableStat]:
    """Row count and a sha256 of every row (in primary-key order) of each table."""
    names = table_names(conn) if names is None else names
    meta = MetaData()
    meta.reflect(bind=conn, only=names)
    stats: dict[str, TableStat] = {}
    for name in names:
        table = meta.tables[name]
        order = list(table.primary_key.columns) or list(table.columns)
        digest, rows = hashlib.sha256(), 0
        result = conn.execution_options(yield_per=1000).execute(select(table).order_by(*order))
        for row in result:
            digest.update(orjson.dumps(list(row), default=_jsonable,
                                       option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
            digest.update(b"\n")
            rows += 1
        stats[name] = TableStat(rows, digest.hexdigest())
    return stats


# -- backend plumbing -------------------------------------------------------------------------


def _backend(url: str) -> str:
    return "sqlite" if make_url(url).get_backend_name() == "sqlite" else "postgresql"


def _sqlite_path(url: str) -> Path:
    name = make_url(url).database
    if not name or name == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(name)


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """SQLAlchemy's postgresql+psycopg:// URL as a libpq URI; the password goes in the
    environment, not on a command line every user can see."""
    parsed = make_url(url)
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    uri = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def _run(args: list[str], env: dict[str, str]) -> None:
    tool = shutil.which(args[0])
    if tool is None:
        raise BackupError(f"{args[0]} is not on PATH: install the PostgreSQL client tools")
    proc = subprocess.run([tool, *args[1:]], env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BackupError(f"{args[0]} failed (exit {proc.returncode}): {proc.stderr.strip()}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _snapshot_sqlite(url: str, out: Path) -> tuple[str | None, dict[str, TableStat]]:
    """Copy the live database through SQLite's online backup API, in one read transaction."""
    src = sqlite3.connect(_sqlite_path(url), timeout=30)
    dst = sqlite3.connect(out)
    try:
        src.backup(dst)  # pages=-1: every page in one step, one consistent read
        dst.execute("PRAGMA journal_mode=DELETE")  # a self-contained file, no -wal beside it
    finally:
        dst.close()
        src.close()
    engine = create_engine(f"sqlite:///{out}")
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision(), table_stats(conn)
    finally:
        engine.dispose()


def _snapshot_postgresql(url: str, out: Path) -> tuple[str | None, dict[str, TableStat]]:
    """pg_dump under a snapshot this transaction exports, so counts and dump agree."""
    uri, env = _libpq(url)
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
                _run(["pg_dump", "--format=custom", f"--snapshot={snapshot}", f"--file={out}",
                      f"--dbname={uri}"], env)
                revision = MigrationContext.configure(conn).get_current_revision()
                return revision, table_stats(conn)
    finally:
        engine.dispose()


def _write_archive(dest: Path, files: dict[str, Path], manifest: Manifest) -> None:
    """Write the tar.gz beside `dest` with mode 0600, then rename it into place."""
    partial = dest.with_name(f".{dest.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = dt.datetime.now(dt.UTC).timestamp()
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            body = manifest.to_json()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mode, info.mtime = len(body), 0o600, int(now)
            tar.addfile(info, io.BytesIO(body))
            for name, path in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = path.stat().st_size, 0o600, int(now)
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
            tar.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _read_keys(data_dir: Path) -> dict[str, Any]:
    path = data_dir / KEYS
    if not path.exists():
        raise BackupError(f"no keyring at {path}: encrypted columns could never be read back")
    return json.loads(path.read_bytes())  # type: ignore[no-any-return]


def _merge_keys(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The keyring as read after the snapshot, plus any key read before it: a rotation that
    retires a key between the two reads cannot leave the snapshot without it."""
    merged = dict(after)
    merged["keys"] = {**before.get("keys", {}), **after.get("keys", {})}
    merged["index_keys"] = {**before.get("index_keys", {}), **after.get("index_keys", {})}
    return merged


# -- backup -----------------------------------------------------------------------------------


def backup_create(
    settings: Settings, dest: Path, actor: Actor, *, report: Report = _quiet,
) -> Manifest:
    """Take a consistent backup of the configured database and the keyring into `dest`."""
    access.require(actor, "backup.create")
    dest = Path(dest).resolve()
    if dest.is_dir():
        raise BackupError(f"{dest} is a directory; give a file name such as cityos.tar.gz")
    dest.parent.mkdir(parents=True, exist_ok=True)
    url, backend = settings.database_url, _backend(settings.database_url)
    data_dir = Path(settings.data_dir)
    keys_before = _read_keys(data_dir)
    with tempfile.TemporaryDirectory(prefix=".cityos-backup-", dir=dest.parent) as tmp:
        db_file = Path(tmp) / DB_MEMBER[backend]
        report(f"snapshot of the {backend} database / 数据库快照")
        snapshot = _snapshot_sqlite if backend == "sqlite" else _snapshot_postgresql
        revision, stats = snapshot(url, db_file)
        keys_file = Path(tmp) / KEYS
        fd = os.open(keys_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(_merge_keys(keys_before, _read_keys(data_dir)), fh, indent=1)
        files = {KEYS: keys_file, DB_MEMBER[backend]: db_file}
        report("checksums / 校验和")
        manifest = Manifest(
            backend=backend, alembic_revision=revision,
            created_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            tables=stats, members={name: _sha256_file(path) for name, path in files.items()},
        )
        report(f"writing {dest.name} / 写入备份文件")
        _write_archive(dest, files, manifest)
    if revision is not None:
        _audit_backup(url, actor, dest, manifest)
    return manifest


def _audit_backup(url: str, actor: Actor, dest: Path, manifest: Manifest) -> None:
    """Record in the live database who took a backup (it holds the keys): after the snapshot,
    so the snapshot is exactly what the caller saw before asking."""
    engine = db.make_engine(url)
    try:
        with db.session_scope(db.make_sessionmaker(engine)) as session:
            audit.append(
                session, actor=actor.name, department=actor.department_code,
                action="backup.create", object_type="backup", object_id=dest.name[:128],
                detail={"backend": manifest.backend, "revision": manifest.alembic_revision,
                        "rows": sum(t.rows for t in manifest.tables.values()),
                        "archive_sha256": _sha256_file(dest)},
            )
    finally:
        engine.dispose()


# -- reading a backup -------------------------------------------------------------------------


def backup_open(path: Path, workdir: Path) -> tuple[Manifest, dict[str, Path]]:
    """Unpack a backup into `workdir` and verify it: known members only, checksums all match."""
    files: dict[str, Path] = {}
    digests: dict[str, str] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name not in MEMBERS or not member.isfile() or member.name in files:
                    raise BackupError(f"{path}: unexpected member {member.name!r}: not a CityOS backup")
                src = tar.extractfile(member)
                assert src is not None
                out = workdir / member.name
                digest = hashlib.sha256()
                with out.open("wb") as fh:
                    os.chmod(out, 0o600)
                    for chunk in iter(lambda: src.read(1 << 20), b""):  # noqa: B023
                        digest.update(chunk)
                        fh.write(chunk)
                files[member.name], digests[member.name] = out, digest.hexdigest()
            # Read to the end of the gzip stream so its CRC is checked too: that covers the
            # manifest, which no checksum of its own protects.
            assert tar.fileobj is not None
            while tar.fileobj.read(1 << 20):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise BackupError(f"{path}: not a readable backup file ({exc})") from None
    if MANIFEST not in files:
        raise BackupError(f"{path}: no manifest.json: not a CityOS backup")
    manifest = Manifest.from_json(files.pop(MANIFEST).read_bytes())
    databases = set(files) & set(DB_MEMBER.values())
    if set(manifest.members) != set(files) or KEYS not in files or len(databases) != 1:
        raise BackupError(f"{path}: members {sorted(files)} do not match the manifest's "
                          f"{sorted(manifest.members)}")
    for name, want in manifest.members.items():
        if digests[name] != want:
            raise BackupError(f"{path}: {name} is corrupt (sha256 does not match the manifest); "
                              "refusing to restore / 备份文件已损坏")
    if DB_MEMBER.get(manifest.backend) not in databases:
        raise BackupError(f"{path}: the manifest says {manifest.backend!r} but the archive "
                          f"holds {databases.pop()}")
    return manifest, files


def _check_revision(manifest: Manifest) -> None:
    if manifest.alembic_revision is None:
        return
    scripts = ScriptDirectory.from_config(db.alembic_config("sqlite://"))
    try:
        scripts.get_revision(manifest.alembic_revision)
    except CommandError:
        raise BackupError(
            f"the backup's schema revision {manifest.alembic_revision} is unknown to this "
            f"CityOS ({cityos.__version__}); restore it with the version that made it "
            f"({manifest.cityos_version})"
        ) from None


# -- restore ----------------------------------------------------------------------------------


def _restore_sqlite(url: str, snapshot: Path, report: Report) -> None:
    target = _sqlite_path(url).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.restore-", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, snapshot.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        check = sqlite3.connect(tmp)
        try:
            verdict = check.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            check.close()
        if verdict != "ok":
            raise BackupError(f"the backup's database fails SQLite's check: {verdict}")
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)  # keep the operator's permissions
            # Leaving WAL mode checkpoints the old file and removes its -wal/-shm, and it needs
            # the only connection: it fails if a server still has the database open.
            old = sqlite3.connect(target, timeout=2)
            try:
                mode = old.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            except sqlite3.OperationalError as exc:
                raise BackupError(f"{target} is in use ({exc}): stop the server before "
                                  "restoring / 请先停止服务") from None
            finally:
                old.close()
            if mode != "delete":
                raise BackupError(f"{target} is in use: stop the server before restoring")
        for suffix in ("-wal", "-shm", "-journal"):  # a stale WAL would be replayed onto the new file
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        report(f"replacing {target.name} / 替换数据库文件")
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _restore_postgresql(url: str, dump: Path, report: Report) -> None:
    uri, env = _libpq(url)
    report("pg_restore --clean (one transaction) / 恢复数据库")
    # One transaction: a failure half-way leaves the database as it was.
    _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--single-transaction",
          "--exit-on-error", f"--dbname={uri}", str(dump)], env)


def backup_restore(
    settings: Settings, path: Path, actor: Actor, *, report: Report = _quiet,
) -> Manifest:
    """Verify a backup, then replace the configured database and the keyring with it."""
    access.require(actor, "backup.restore")
    url, backend = settings.database_url, _backend(settings.database_url)
    path = Path(path)
    work_parent = _sqlite_path(url).resolve().parent if backend == "sqlite" else None
    if work_parent is not None:
        work_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cityos-restore-", dir=work_parent) as tmp:
        report(f"checking {path.name} / 校验备份文件")
        manifest, files = backup_open(path, Path(tmp))
        if manifest.backend != backend:
            raise BackupError(
                f"this backup is of a {manifest.backend} database but CityOS is configured for "
                f"{backend} ({make_url(url).render_as_string(hide_password=True)}); restore it "
                f"into a {manifest.backend} database / 备份与当前数据库类型不一致"
            )
        _check_revision(manifest)
        if backend == "sqlite":
            _restore_sqlite(url, files[DB_MEMBER[backend]], report)
        else:
            _restore_postgresql(url, files[DB_MEMBER[backend]], report)
        report("verifying tables against the manifest / 核对数据表")
        extra = _verify_restored(url, manifest)
        if extra:
            report(f"warning: tables not in the backup were left in place: {', '.join(extra)}")
        report("restoring keys.json / 恢复密钥文件")
        _restore_keys(Path(settings.data_dir), files[KEYS])
    return manifest


def _verify_restored(url: str, manifest: Manifest) -> list[str]:
    """Refuse a restored database whose tables differ from the manifest's; return the tables
    present that the backup did not have (left in place)."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            present = set(table_names(conn))
            missing = sorted(set(manifest.tables) - present)
            if missing:
                raise BackupError(f"restored database lacks tables {', '.join(missing)}")
            actual = table_stats(conn, sorted(manifest.tables))
    finally:
        engine.dispose()
    bad = [n for n, stat in manifest.tables.items() if actual[n] != stat]
    if bad:
        raise BackupError("restored tables differ from the manifest: " + ", ".join(
            f"{n} ({actual[n].rows} rows, manifest {manifest.tables[n].rows})" for n in bad))
    return sorted(present - set(manifest.tables))


def _restore_keys(data_dir: Path, keys_file: Path) -> None:
    """Put the backup's keyring in place, keeping the current one beside it (0600 both)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    target = data_dir / KEYS
    if target.exists():
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        bak = data_dir / f"{KEYS}.bak-{stamp}"
        # Copy, not move: at no moment is there no keys.json (a missing one would be recreated
        # empty by the next start, and everything encrypted would be lost).
        fd = os.open(bak, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(target.read_bytes())
            out.flush()
            os.fsync(out.fileno())
    crypto.write_private(target, keys_file.read_bytes())
    _fsync_dir(data_dir)

