"""Shared by the rules, alerts and webhook tests: a writer with a running rules engine, rules made
through the service, and the alerts they raised."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from cityos.core.access import SYSTEM
from cityos.sensing import rules
from cityos.sensing.ingest import Writer
from cityos.sensing.models import Alert, Rule

POINT = '{{"type":"Point","coordinates":[{},{}]}}'


class Harness:
    """A writer feeding a started rules engine; `write` returns once the batch is judged."""

    def __init__(self, engine: Engine, writer: Writer, rules_engine: rules.Engine | None = None) -> None:
        self.engine, self.writer = engine, writer
        self.rules = rules_engine or rules.Engine(engine, tick_seconds=3600)
        writer.add_listener(self.rules.feed)
        self.rules.start()

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        before = self.rules.fed
        written = self.writer.write_sync(rows)
        deadline = time.monotonic() + 10
        # The writer acknowledges before it calls its listeners: wait for the hand-over.
        while written.new and self.rules.fed == before and time.monotonic() < deadline:
            time.sleep(0.002)
        assert self.rules.drain(10)

    def rule(self, kind: str, target_id: int, params: dict[str, Any], target_type: str = "datastream",
             department: str = "220200-hbj", **kw: Any) -> Rule:
        with Session(self.engine, expire_on_commit=False) as s:
            r = rules.rule_create(s, SYSTEM, {"name": kw.pop("name", f"{kind} rule"), "kind": kind,
                                              "target_type": target_type, "target_id": target_id,
                                              "params": params, "department": department, **kw})
            s.commit()
        self.rules.reload()
        return r

    def alerts(self, rule_id: int | None = None) -> list[Alert]:
        with Session(self.engine) as s:
            q = select(Alert).order_by(Alert.id)
            if rule_id is not None:
                q = q.where(Alert.rule_id == rule_id)
            return list(s.scalars(q))

    def close(self) -> None:
        self.rules.stop()
