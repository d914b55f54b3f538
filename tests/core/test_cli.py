"""The CLI names others script against: db upgrade, department list, user create, apikey create."""

from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cityos.cli import app as cli_app

runner = CliRunner()


@pytest.fixture
def cli_env(settings, monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    return settings


def test_department_list_prints_codes_and_names(cli_env, city):
    result = runner.invoke(cli_app, ["department", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "220202" in result.output and "昌邑区" in result.output
    assert "220200-gaj" in result.output


def test_user_create_and_sign_in(cli_env, city, client):
    result = runner.invoke(cli_app, ["user", "create", "zhao6", "--department", "220200-hbj",
                                     "--role", "department_staff", "--password", "long-enough-1"])
    assert result.exit_code == 0, result.output
    r = client.post("/api/auth/token", data={"username": "zhao6", "password": "long-enough-1"})
    assert r.status_code == 200


def test_user_create_bad_role_is_a_clear_error(cli_env, city):
    result = runner.invoke(cli_app, ["user", "create", "x1", "--department", "220200-hbj",
                                     "--role", "mayor", "--password", "long-enough-1"])
    assert result.exit_code == 1
    assert "role" in result.output


def test_apikey_create_prints_a_working_key(cli_env, city, client):
    result = runner.invoke(cli_app, ["apikey", "create", "--department", "220200-gaj",
                                     "--scope", "user.read", "--scope", "department.read"],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    key = next(w for w in result.output.split() if w.startswith("cos_"))
    assert client.get("/api/departments", headers={"X-API-Key": key}).status_code == 200


def test_unmigrated_database_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    monkeypatch.setenv("CITYOS_DATA_DIR", str(tmp_path))
    result = runner.invoke(cli_app, ["department", "list"])
    assert result.exit_code == 1
    assert "cityos db upgrade" in result.output
    assert runner.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(cli_app, ["department", "list"]).exit_code == 0


def test_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("CITYOS_DATABASE_URL", "oracle://nope")
    result = runner.invoke(cli_app, ["department", "list"])
    assert result.exit_code == 2
    assert "CITYOS_DATABASE_URL" in result.output


_MALLOC_PROBE = """
import ctypes, ctypes.util, sys
from cityos import cli
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    cli._tune_malloc()
libc.free(libc.malloc(4 << 20))  # a big block freed: glibc would raise its mmap threshold to 4 MB
before = libc.mallinfo2().hblks
blocks = [libc.malloc(256 << 10) for _ in range(40)]  # request bodies; a few may fit holes in the heap
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.parametrize("mode, mapped", [("tuned", True), ("default", False)])
def test_serve_keeps_large_blocks_out_of_the_heap(mode, mapped):
    """`cityos serve` fixes glibc's mmap threshold: a block of a few hundred KB is mapped (and given
    back when freed) even after a larger one was freed, instead of leaving a hole in the heap."""
    if platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"):
        pytest.skip("glibc's malloc only")
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": ""})  # no MALLOC_* tunables
    assert (int(out.stdout.split()[-1]) >= 30) is mapped, out.stdout + out.stderr
