"""The audit chain catches edits, deletions and reorderings made directly in the database."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select, text, update
from typer.testing import CliRunner

from cityos.cli import app as cli_app
from cityos.core import audit, crypto
from cityos.core.models import AuditRecord


def _run_together(threads):
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _chain(sessions, n=6):
    with sessions() as s:
        for i in range(n):
            audit.append(s, actor=f"u{i}", action="test.write", department="220200",
                         object_type="thing", object_id=i, detail={"i": i, "note": "标注"})
        s.commit()


def test_fresh_chain_verifies(sessions):
    _chain(sessions)
    with sessions() as s:
        result = audit.verify(s)
    assert result.ok and result.checked == 6
    assert "intact" in result.message()


def test_records_carry_algorithm_and_links(sessions):
    _chain(sessions, 3)
    with sessions() as s:
        recs = s.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
    assert recs[0].prev_hash == audit.GENESIS
    assert recs[1].prev_hash == recs[0].hash
    assert {r.algo for r in recs} == {crypto.HASH_ALGO}
    assert crypto.HASH_ALGO == ("sm3" if crypto.SM3 else "sha256")


@pytest.mark.parametrize(("tampering", "first_bad", "reason"), [
    (text("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 4"), 4, "edited"),
    (update(AuditRecord).where(AuditRecord.seq == 2).values(detail={"i": 99}), 2, "edited"),
    (text("DELETE FROM audit_log WHERE seq = 3"), 4, "deleted"),
    (text("DELETE FROM audit_log WHERE seq = 6"), None, "tail"),
], ids=["edited-actor", "edited-detail", "deleted", "deleted-tail"])
def test_tampering_in_the_database_is_named(sessions, tampering, first_bad, reason):
    _chain(sessions)
    with sessions() as s:
        s.execute(tampering)
        s.commit()
        result = audit.verify(s)
    assert not result.ok
    if first_bad is not None:
        assert result.first_bad_seq == first_bad
    assert reason in result.reason


def test_reordered_records_are_named(sessions):
    _chain(sessions)
    with sessions() as s:
        # Swap the content of records 2 and 3 while keeping seq in place.
        a = s.scalar(select(AuditRecord).where(AuditRecord.seq == 2))
        b = s.scalar(select(AuditRecord).where(AuditRecord.seq == 3))
        cols = ("at", "actor", "object_id", "detail", "prev_hash", "hash")
        va, vb = {c: getattr(a, c) for c in cols}, {c: getattr(b, c) for c in cols}
        s.execute(update(AuditRecord).where(AuditRecord.id == a.id).values(**vb))
        s.execute(update(AuditRecord).where(AuditRecord.id == b.id).values(**va))
        s.commit()
        result = audit.verify(s)
    assert not result.ok and result.first_bad_seq == 2


def test_rewritten_hash_still_breaks_the_next_link(sessions):
    """An attacker who edits a record and recomputes its hash breaks its successor's link."""
    _chain(sessions)
    with sessions() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.seq == 3))
        rec.actor = "forger"
        rec.hash = audit.record_hash(rec)
        s.commit()
        result = audit.verify(s)
    assert not result.ok and result.first_bad_seq == 4


def test_every_write_and_login_is_audited(client, city, sessions):
    with sessions() as s:
        before = s.scalar(select(func.count()).select_from(AuditRecord))
    client.post("/api/departments", headers=city.headers("admin"), json={
        "code": "220200-sjj", "name": "市数据局", "kind": "bureau", "parent_code": "220200"})
    with sessions() as s:
        actions = s.scalars(select(AuditRecord.action).where(AuditRecord.seq > before)).all()
    assert "auth.login" in actions and "department.create" in actions


def test_audit_api_filters_and_paginates(client, city):
    city.token("admin"), city.token("police_staff")
    r = client.get("/api/audit", params={"action": "auth.login", "limit": 1},
                   headers=city.headers("auditor"))
    assert r.status_code == 200
    body = r.json()
    assert len(body["items"]) == 1 and body["total"] >= 2 and body["next_offset"] == 1
    assert body["items"][0]["action"] == "auth.login"


def test_audit_api_verify_reports_tampering(client, city, sessions):
    headers = city.headers("auditor")
    assert client.post("/api/audit/verify", headers=headers).json()["ok"] is True
    with sessions() as s:
        s.execute(text("UPDATE audit_log SET outcome = 'success' WHERE seq = 1"))
        s.execute(text("UPDATE audit_log SET action = 'x' WHERE seq = 2"))
        s.commit()
    body = client.post("/api/audit/verify", headers=headers).json()
    assert body["ok"] is False and body["first_bad_seq"] == 2


def test_cli_verify_names_the_tampered_record(sessions, settings, monkeypatch):
    _chain(sessions)
    monkeypatch.setenv("CITYOS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("CITYOS_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["audit", "verify"]).exit_code == 0
    with sessions() as s:
        s.execute(text("UPDATE audit_log SET object_id = '42' WHERE seq = 5"))
        s.commit()
    result = runner.invoke(cli_app, ["audit", "verify"])
    assert result.exit_code == 1
    assert "seq=5" in result.output


def test_concurrent_appends_keep_one_chain(sessions):
    def worker(k):
        for i in range(10):
            with sessions() as s:
                audit.append(s, actor=f"w{k}", action="test.concurrent", object_id=i)
                s.commit()

    _run_together([threading.Thread(target=worker, args=(k,)) for k in range(4)])
    with sessions() as s:
        result = audit.verify(s)
    assert result.ok and result.checked == 40


def test_group_writer_commits_concurrent_records_as_one_chain(engine, sessions):
    """Group commit: threads appending through the writer, mixed with appends in their own
    transactions, leave one contiguous chain; each caller gets its own record's hash, committed."""
    writer = audit.GroupWriter(engine)
    got: dict[str, str] = {}
    start = threading.Barrier(9)

    def grouped(k):
        start.wait()
        for i in range(10):
            got[f"g{k}-{i}"] = writer.append(actor=f"g{k}", action="test.read", object_id=i,
                                             detail={"request_hash": f"g{k}-{i}"})

    def inline(k):
        start.wait()
        for i in range(5):
            with sessions() as s:
                audit.append(s, actor=f"w{k}", action="test.write", object_id=i)
                s.commit()

    threads = [threading.Thread(target=grouped, args=(k,)) for k in range(8)]
    threads.append(threading.Thread(target=inline, args=(0,)))
    _run_together(threads)
    with sessions() as s:
        result = audit.verify(s)
        records = s.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
    assert result.ok and result.checked == 85
    assert [r.seq for r in records] == list(range(1, 86))
    by_key = {r.detail["request_hash"]: r.hash for r in records if r.action == "test.read"}
    assert by_key == got
    assert 1 <= writer.batches <= 80


def test_group_writer_failure_reaches_the_caller_and_the_writer_goes_on(engine, sessions, tmp_path):
    """A batch that cannot be committed fails its callers (no hash handed out); the next one works."""
    from sqlalchemy.exc import OperationalError

    from cityos.core import db

    broken = audit.GroupWriter(db.make_engine(f"sqlite:///{tmp_path / 'none' / 'x.db'}"))
    (tmp_path / "none").mkdir(exist_ok=True)
    (tmp_path / "none" / "x.db").mkdir()  # a directory where the database file should be
    with pytest.raises(OperationalError):
        broken.append(actor="a", action="test.read")
    writer = audit.GroupWriter(engine)
    h = writer.append(actor="a", action="test.read")
    with sessions() as s:
        assert s.scalar(select(AuditRecord.hash).where(AuditRecord.seq == 1)) == h
        assert audit.verify(s).ok


def test_group_writer_thread_ends_when_idle_and_starts_again(engine, sessions):
    import time

    writer = audit.GroupWriter(engine, idle_seconds=0.05)
    writer.append(actor="a", action="test.read")
    time.sleep(0.3)
    assert not writer._running
    writer.append(actor="b", action="test.read")
    with sessions() as s:
        assert audit.verify(s).checked == 2
