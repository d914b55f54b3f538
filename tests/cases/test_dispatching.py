"""Smart dispatch (智能派单): the model trained on the demo's generated history, its stored form,
the rules that win over it (checked with a real map layer), and training from closed cases on
both databases."""

from __future__ import annotations

import pickle
import zlib
from collections import Counter

import pytest
import shapely
from sqlalchemy import select
from sqlalchemy.orm import Session

import cityos.maps.service as maps
from cityos.cases import dispatching, gbt30428
from cityos.cases.models import KINDS, LINES, Case, CaseCategory, CaseModel, CaseWorkflow
from cityos.core import access, auth
from cityos.core.access import SYSTEM
from cityos.core.errors import Forbidden, Invalid
from cityos.core.models import AuditRecord, Department, User
from cityos.demo import cases_history
from cityos.demo.cases_history import BY_CODE, CATEGORIES, history
from tests.cases.conftest import ENV, PARKS, POLICE, seed_cases
from tests.conftest import seed_small_city

SLUGS = {"hotline", "citymgmt", "parks", "municipal", "water", "police", "env", "transport", "enforcement",
         "housing", "civil", "health", "education", "market", "heating", "gas"}


@pytest.fixture(scope="module")
def generated() -> list[cases_history.HistoryCase]:
    return history(4000, seed=11)


@pytest.fixture(scope="module")
def trained(generated: list[cases_history.HistoryCase]) -> dispatching.Trained:
    return dispatching.train([c.text for c in generated], [c.category for c in generated], seed=1)


# -- the catalog and the generated history ------------------------------------------------------------


def test_catalog_is_consistent() -> None:
    codes = [c.code for c in CATEGORIES]
    assert len(codes) == len(set(codes)) and 20 <= len(codes) <= 30
    for c in CATEGORIES:
        assert c.line in ("hotline", "citymgmt") and c.kind in KINDS and c.department in SLUGS, c
        assert c.code.isascii() and c.name and c.name_en and c.group and c.keywords
        assert c.code in cases_history.PHRASES
        if c.line == "citymgmt":  # GB/T 30428 class of the right kind
            assert c.kind in ("component", "event") and c.gbt_code
            assert gbt30428.get(c.gbt_code, c.kind).code == c.gbt_code
        else:
            assert c.kind in ("consultation", "help", "complaint", "report", "suggestion") and c.gbt_code is None
    with_attrs = [c for c in CATEGORIES if c.attributes]
    assert 2 <= len(with_attrs) <= 3
    for c in with_attrs:
        for a in c.attributes:
            assert a["datatype"] == "singlevaluelist" and a["values"] and a["description"]
    rows = cases_history.category_rows()
    assert [r["code"] for r in rows] == codes and all(r["workflow_code"] in LINES for r in rows)
    assert dispatching.rules_from(cases_history.RULES)[0].category in BY_CODE


def test_history_is_deterministic_varied_and_covers_the_catalog(
        generated: list[cases_history.HistoryCase]) -> None:
    assert history(300, seed=11) == generated[:300]
    assert history(300, seed=12) != generated[:300]
    assert {c.category for c in generated} == set(BY_CODE)
    assert len({c.text for c in generated}) > 0.95 * len(generated)
    counts = Counter(c.category for c in generated)
    assert counts["heating"] > counts["taxi"]  # some matters are far more common than others
    for c in generated[:500]:
        spec = BY_CODE[c.category]
        assert c.title and c.description and c.line == spec.line
        assert c.satisfaction in ("satisfied", "basic", "unsatisfied") and 1 <= c.days_ago <= 730
        assert 126 < c.lon < 127 and 43.5 < c.lat < 44.2
        required = {a["code"] for a in spec.attributes if a["required"]}
        assert required <= set(c.attributes)
    manholes = [c for c in generated if c.category == "manhole" and "偷" in c.description]
    assert manholes and all(c.attributes["cover_state"] == "missing" for c in manholes)


# -- training -------------------------------------------------------------------------------------


def test_training_reports_held_out_accuracy(trained: dispatching.Trained) -> None:
    m = trained.metrics
    assert m["n"] == 4000 and m["n_train"] + m["n_test"] == 4000 and 700 <= m["n_test"] <= 900
    assert 0.85 <= m["accuracy"] < 0.99  # learnt, but the history is not trivially separable
    assert m["accuracy"] <= m["top3"] <= 1
    assert sum(m["counts"].values()) == 4000 and m["labels"] == sorted(BY_CODE)
    assert set(m["class_accuracy"]) == set(BY_CODE) and m["seconds"] > 0 and m["features"] > 1000
    shares = [step["share"] for step in m["by_confidence"]]
    assert shares == sorted(shares, reverse=True)
    assert trained.labels == m["labels"]
    lines = dispatching.report_lines(m)
    assert any("top-3" in line for line in lines)


def test_train_refuses_what_it_cannot_learn_from() -> None:
    with pytest.raises(Invalid):
        dispatching.train(["井盖丢了"] * 10, ["manhole"] * 10)
    with pytest.raises(Invalid):
        dispatching.train(["a", "b"], ["x"])
    with pytest.raises(Invalid):
        dispatching.train(["a", "b"], ["x", "y"], holdout=1.0)


def test_a_rare_category_stays_in_training() -> None:
    texts = ["楼下井盖丢了", "井盖碎了", "井盖松动", "路灯不亮", "路灯闪烁", "路灯白天亮着", "暖气不热"]
    labels = ["manhole"] * 3 + ["streetlight"] * 3 + ["heating"]
    got = dispatching.train(texts, labels, holdout=0.34)
    assert got.metrics["counts"]["heating"] == 1 and "heating" not in got.metrics["class_accuracy"]
    assert got.labels == ["heating", "manhole", "streetlight"]


def test_suggest_texts_ranks_three_per_text(trained: dispatching.Trained) -> None:
    texts = ["家里暖气一直不热，室温才十四度", "路口的井盖被偷了，晚上很危险", "楼下烧烤店油烟太大", ""]
    got = dispatching.suggest_texts(trained, texts)
    assert len(got) == 4 and all(len(row) == 3 for row in got)
    for row in got:
        probs = [p for _c, p in row]
        assert probs == sorted(probs, reverse=True) and 0 <= sum(probs) <= 1.0001
        assert all(isinstance(c, str) and isinstance(p, float) for c, p in row)
    assert [row[0][0] for row in got[:3]] == ["heating", "manhole", "fumes"]
    assert dispatching.suggest_texts(trained, []) == []


def test_dumps_loads_round_trip(trained: dispatching.Trained) -> None:
    blob = dispatching.dumps(trained)
    back = dispatching.loads(blob)
    texts = ["电梯又坏了把人困在里面", "孩子上户口需要什么材料"]
    assert dispatching.suggest_texts(back, texts) == dispatching.suggest_texts(trained, texts)
    assert back.metrics == trained.metrics
    with pytest.raises(Invalid):
        dispatching.loads(b"not a model")
    old = dispatching.Trained(trained.pipeline, trained.metrics, sklearn_version="0.1")
    with pytest.raises(Invalid):
        dispatching.loads(dispatching.dumps(old))
    with pytest.raises(Invalid):
        dispatching.loads(zlib.compress(pickle.dumps((dispatching.FORMAT + 1, trained))))


def test_rules_from_data() -> None:
    rules = dispatching.rules_from([
        {"layer": "parks", "category": "trees", "department": "parks", "reason": "公园内"},
        ("river", "pollution", "env", ""),
    ], departments={"parks": PARKS, "env": ENV})
    assert rules[0] == dispatching.Rule("parks", "trees", PARKS, "公园内")
    assert rules[1].department == ENV and rules[1].reason  # a default reason
    for bad in ([{"layer": "parks", "category": "trees"}], [("parks", "trees", "")]):
        with pytest.raises(Invalid):
            dispatching.rules_from(bad)
    with pytest.raises(Invalid):
        dispatching.rules_from([("parks", "trees", "nowhere", "")], departments={"parks": PARKS})


# -- the database: training from closed cases, and suggesting -------------------------------------


def _city(session: Session) -> None:
    seed_small_city(session)
    seed_cases(session)


def _insert(session: Session, items: list[tuple[str, str, str]], status: str = "closed") -> None:
    """Cases written as rows (as the demo writes its history): (title, description, category)."""
    cats = {c.code: c for c in session.scalars(select(CaseCategory))}
    wf = session.scalars(select(CaseWorkflow).where(CaseWorkflow.code == "hotline")).first()
    assert wf is not None and wf.department_id is not None
    start = session.scalar(select(Case.id).order_by(Case.id.desc()).limit(1)) or 0
    for i, (title, description, code) in enumerate(items, start=start + 1):
        cat = cats[code]
        session.add(Case(token=f"t{i:08d}", line=cat.line, kind=cat.kind or "complaint", channel="phone",
                         category_id=cat.id, title=title, description=description, status=status,
                         dispatch_department_id=wf.department_id, department_id=cat.department_id,
                         workflow_id=wf.id))
    session.flush()


def _history_rows(n: int, seed: int = 5) -> list[tuple[str, str, str]]:
    """Generated cases of the test city's categories (noise, pollution, tree, manhole)."""
    cats = [BY_CODE[c] for c in ("noise", "pollution", "trees", "manhole")]
    rename = {"trees": "tree"}
    return [(h.title, h.description, rename.get(h.category, h.category)) for h in history(n, seed, cats)]


def _staff(session: Session, username: str) -> access.Actor:
    user = session.scalar(select(User).where(User.username == username))
    assert user is not None
    return auth.user_actor(user)


def test_train_from_db_learns_from_closed_cases(session: Session) -> None:
    _city(session)
    _insert(session, _history_rows(160))
    _insert(session, [("open case", "不算", "policy")] * 30, status="handling")  # not closed: not learnt
    row = dispatching.train_from_db(session, SYSTEM, min_cases=100)
    session.commit()
    m = row.metrics
    assert row.cases == 160 == m["n"] and row.trained_by == "system"
    assert set(m["labels"]) == {"noise", "pollution", "tree", "manhole"} and "policy" not in m["counts"]
    assert m["accuracy"] is not None and m["top3"] >= m["accuracy"]
    audit = session.scalars(select(AuditRecord).where(AuditRecord.action == "cases.model.train")).all()
    assert len(audit) == 1 and audit[0].object_id == str(row.id)
    stored = session.get(CaseModel, row.id)
    assert stored is not None and dispatching.loads(stored.blob).labels == m["labels"]

    depts = {d.id: d.code for d in session.scalars(select(Department))}
    known = {c.code: depts[c.department_id] for c in session.scalars(select(CaseCategory))
             if c.department_id is not None}
    got = dispatching.suggest(session, "楼上邻居半夜唱歌噪音太大，吵得睡不着", None, None, categories=known)
    assert got.source == "model" and got.category == "noise" and got.department == POLICE
    assert 0 < got.confidence <= 1 and got.top3[0][0] == "noise" and f"#{row.id}" in got.reason
    assert got.as_dict()["top3"][0][0] == "noise"
    # Only active categories are suggested.
    narrowed = dispatching.suggest(session, "楼上邻居半夜唱歌噪音太大", None, None,
                                   categories={"pollution": ENV, "tree": PARKS})
    assert narrowed.category in ("pollution", "tree") and [c for c, _p in narrowed.top3] != ["noise"]


def test_train_from_db_refuses(session: Session) -> None:
    _city(session)
    with pytest.raises(Invalid) as err:
        dispatching.train_from_db(session, SYSTEM)
    assert "50" in err.value.errors[0].reason
    _insert(session, [(f"噪音{i}", "楼下吵闹", "noise") for i in range(60)])
    with pytest.raises(Invalid) as err:  # one category: nothing to tell apart
        dispatching.train_from_db(session, SYSTEM)
    assert err.value.errors[0].field == "cases"
    _insert(session, _history_rows(60))
    with pytest.raises(Forbidden):
        dispatching.train_from_db(session, _staff(session, "env_staff"))
    assert session.scalar(select(CaseModel.id)) is None


def _store(session: Session, trained: dispatching.Trained) -> CaseModel:
    row = CaseModel(cases=trained.metrics["n"], metrics=trained.metrics, blob=dispatching.dumps(trained))
    session.add(row)
    session.flush()
    return row


def _parks_layer(session: Session) -> None:
    maps.layer_create(session, SYSTEM, {
        "code": "parks", "title": "城市公园", "department": PARKS, "geometry_type": "polygon",
        "public": True, "open_type": "open", "attributes": [{"name": "code", "title": "代码", "type": "string"},
                       {"name": "name", "title": "名称", "type": "string"}]})
    maps.features_write(session, SYSTEM, "parks", [
        ("beishan", shapely.box(126.53, 43.85, 126.545, 43.86), {"code": "beishan", "name": "北山公园"})])


def test_rules_win_over_the_model(session: Session, trained: dispatching.Trained) -> None:
    _city(session)
    _parks_layer(session)
    _store(session, trained)
    session.commit()
    known: dict[str, str | None] = {c.code: ENV for c in CATEGORIES} | {"trees": PARKS, "noise": POLICE}
    rules = dispatching.rules_from(cases_history.RULES, departments={"parks": PARKS})
    text = "广场舞音响开得特别大声，晚上吵得不行"
    inside = dispatching.suggest(session, text, 126.537, 43.855, categories=known, rules=rules)
    assert (inside.source, inside.category, inside.department, inside.confidence) == ("rule", "trees", PARKS, 1.0)
    assert inside.reason == rules[0].reason and inside.top3[0][0] == "noise" and inside.confident(0.99)
    outside = dispatching.suggest(session, text, 126.60, 43.90, categories=known, rules=rules)
    assert (outside.source, outside.category, outside.department) == ("model", "noise", POLICE)
    assert outside.confident(0.0) and not outside.confident(1.01)
    # No location, or a rule whose layer is gone: the model answers.
    assert dispatching.suggest(session, text, None, None, categories=known, rules=rules).source == "model"
    gone = [dispatching.Rule("lakes", "trees", PARKS, "湖区"), *rules]
    assert dispatching.suggest(session, text, 126.537, 43.855, categories=known, rules=gone).source == "rule"
    assert dispatching.rule_hit(session, gone[:1], 126.537, 43.855) is None
    # A layer the actor may not read is skipped too (the platform admin reads no department's data).
    maps.layer_create(session, SYSTEM, {
        "code": "closed-zones", "title": "内部区域", "department": ENV, "geometry_type": "polygon",
        "attributes": [{"name": "code", "title": "代码", "type": "string"}]})
    maps.features_write(session, SYSTEM, "closed-zones", [("z", shapely.box(126, 43, 127, 44), {"code": "z"})])
    closed = [dispatching.Rule("closed-zones", "pollution", ENV, "内部区域")]
    assert dispatching.rule_hit(session, closed, 126.537, 43.855) is None


def test_suggest_follows_the_newest_model(session: Session, trained: dispatching.Trained) -> None:
    _city(session)
    known: dict[str, str | None] = {c.code: ENV for c in CATEGORIES}
    none = dispatching.suggest(session, "暖气不热", None, None, categories=known)
    assert (none.source, none.category, none.confidence, none.top3) == ("none", None, 0.0, [])
    assert not none.confident(0.0)
    first = _store(session, trained)
    session.commit()
    got = dispatching.suggest(session, "暖气不热", None, None, categories=known)
    assert got.category == "heating" and f"#{first.id}" in got.reason
    # A newer model (here: one that knows only two categories) replaces the cached one.
    small = dispatching.train(["暖气不热"] * 5 + ["井盖丢了"] * 5 + ["路灯不亮"] * 5,
                              ["heating"] * 5 + ["manhole"] * 5 + ["streetlight"] * 5)
    second = _store(session, small)
    session.commit()
    again = dispatching.suggest(session, "井盖丢了", None, None, categories=known)
    assert f"#{second.id}" in again.reason and {c for c, _p in again.top3} <= {"heating", "manhole",
                                                                                "streetlight"}
    unknown = dispatching.suggest(session, "井盖丢了", None, None, categories={"noise": POLICE})
    assert unknown.source == "none" and "none of the active" in unknown.reason
    # A model stored by another version asks for retraining instead of failing the intake.
    stale = dispatching.Trained(small.pipeline, small.metrics, sklearn_version="0.1")
    _store(session, stale)
    session.commit()
    refused = dispatching.suggest(session, "井盖丢了", None, None, categories=known)
    assert refused.source == "none" and "cityos cases train" in refused.reason
