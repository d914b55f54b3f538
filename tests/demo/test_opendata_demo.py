"""The demo city's open data: topics, an opening plan over every resource the catalog marks
open or conditional (some overdue), most of them published through the whole review with
de-identified copies — no raw ID number or mobile number in any of them — and applications
for conditional data. A second build creates nothing.

The demo's open data is built on its data hub, which scale 0 leaves out: these tests build
the hub at the tiny scale its own tests use."""

from __future__ import annotations

import datetime as dt
import re
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from stdnum.cn import ric

from cityos.core import access
from cityos.core.identifiers import validate_credit_code
from cityos.core.models import AuditRecord, User
from cityos.core.settings import Settings
from cityos.demo import opendata_seed, seed
from cityos.hub.models import Resource
from cityos.hub.service import city_today
from cityos.opendata import applications, deid, rows, service
from cityos.opendata.models import AccessKey, Application, Dataset, PlanEntry, Topic

SCALE = 0.0005  # as tests/demo/test_hub_demo.py: a few dozen rows of everything
MOBILE = re.compile(r"1[3-9]\d{9}")
TOPICS = {"environment": "生态环境", "transport": "交通出行", "population": "人口", "health": "医疗卫生",
          "education": "教育", "social": "社会保障", "economy": "经济", "urban": "城市建设",
          "government": "政务", "safety": "公共安全", "culture": "文化旅游"}


def test_catalog_names_every_topic_and_a_sound_plan() -> None:
    cat = opendata_seed.catalog()
    assert {t.name: t.title for t in cat.topics} == TOPICS and all(t.title_en for t in cat.topics)
    names = [o.name for o in cat.opens]
    assert len(set(names)) == len(names) and all(service.NAME_RE.match(n) for n in names)
    stages = Counter(o.stage for o in cat.opens)
    assert stages["overdue"] >= 2 and stages["planned"] >= 1 and stages["published"] >= 20
    assert {o.name for o in cat.opens} >= {a.dataset for a in cat.applications}
    assert {a.outcome for a in cat.applications} == {"pending", "approved", "refused"}
    for a in cat.applications:
        assert a.credit_code is None or validate_credit_code(a.credit_code) == a.credit_code
    today = dt.date(2026, 11, 21)
    dates = opendata_seed.plan_dates([o.stage for o in cat.opens], today)
    for o, d in zip(cat.opens, dates, strict=True):
        assert d.year == 2026
        assert (d < today) == (o.stage != "planned"), (o.name, d)


def _published_rows(s: Session, ds: Dataset) -> list[dict]:
    return list(rows.iter_rows(s, ds))


def test_demo_publishes_open_data_through_the_review(settings: Settings, sessions: sessionmaker[Session]) -> None:
    report = seed.build(settings, scale=SCALE)
    od = report.opendata
    assert od is not None and not od.failed, od and od.failed
    assert od.topics_created == len(TOPICS) and od.applications_created == 3 and od.key

    with sessions() as s:
        assert {t.name: t.title for t in s.scalars(select(Topic))} == TOPICS
        # The plan covers every resource the catalog marks open or conditional, and only those.
        openable = set(s.scalars(select(Resource.id).where(  # map layers open through the map
            Resource.open_type.in_(("open", "conditional")), Resource.secret.is_(False),
            Resource.format != "geo")))
        plan = list(s.scalars(select(PlanEntry)))
        assert {e.resource_id for e in plan} == openable and len(openable) >= 25
        status = Counter(service.plan_status(s, e) for e in plan)
        assert status["overdue"] >= 2 and status["planned"] >= 1 and status["published"] >= 20
        assert {e.planned_on.year for e in plan if service.plan_status(s, e) != "planned"} == {
            city_today().year}

        datasets = {d.name: d for d in s.scalars(select(Dataset))}
        published = [d for d in datasets.values() if d.state == "published"]
        assert len(published) >= 20
        assert {d.state for d in datasets.values() if d.state != "published"} == {"draft", "submitted"}
        for ds in published:
            assert ds.row_count > 0 and ds.licence == "CC-BY-4.0" and ds.topics and ds.tags, ds.name
            assert ds.spatial and ds.spatial.startswith("吉林市") and "磐石市" in ds.spatial
            assert [r.step for r in service.reviews(s, ds)] == ["draft", "submit", "provider_approve",
                                                                "office_approve"], ds.name
            by = {r.step: r.by for r in service.reviews(s, ds)}
            staff, admin = (s.scalar(select(User).where(User.username == by[k])) for k in ("submit",
                                                                                           "provider_approve"))
            assert staff.role == access.DEPARTMENT_STAFF and staff.department_id == ds.department_id
            assert admin.role == access.DEPARTMENT_ADMIN and admin.department_id == ds.department_id
            assert by["office_approve"] == "admin" and ds.published_at.date() < city_today()
            got = _published_rows(s, ds)
            assert len(got) == ds.row_count
            for r in got:  # nothing anywhere reads as an ID or mobile number
                for v in r.values():
                    if isinstance(v, str):
                        assert not ric.is_valid(v) and not deid.looks_like_id(v), (ds.name, v)
                        assert not MOBILE.fullmatch(v), (ds.name, v)
        assert {"environment", "transport", "health", "education", "economy"} <= {
            t for d in published for t in d.topics}
        geo = datasets["bus-stops"]
        assert (geo.lon_field, geo.lat_field) == ("lon", "lat") and geo.bbox is not None

        # The people data: IDs masked, names to the surname, ages in bands, k = 5 over them.
        seniors = datasets["senior-allowance"]
        assert seniors.state == "published" and seniors.k == 5
        assert seniors.quasi_identifiers == ["age_band", "gender", "district"]
        assert {f["id"] for f in seniors.fields} >= {"id_number", "name", "age_band"}
        assert not {"address", "phone", "birth_date"} & {f["id"] for f in seniors.fields}
        got = _published_rows(s, seniors)
        assert len(got) > 1000
        assert all(re.fullmatch(r"220\*{13}[0-9X]{2}", r["id_number"]) for r in got)
        assert all(r["name"][1:] and set(r["name"][1:]) == {"*"} for r in got)
        assert {r["age_band"] for r in got} <= {"80-84", "85-89", "90+"}
        assert min(Counter((r["age_band"], r["gender"], r["district"]) for r in got).values()) >= 5

        # Conditional data: a company's pending application, an approved one with its key.
        credit = datasets["enterprise-credit-ratings"]
        assert credit.open_level == "conditional" and credit.state == "published"
        apps = list(s.scalars(select(Application)))
        company = s.scalar(select(User).where(User.username == opendata_seed.COMPANY_USER[0]))
        assert company is not None and company.role == access.RESIDENT
        states = {(a.dataset.name, a.state) for a in apps if a.user_id == company.id}
        assert states == {("enterprise-credit-ratings", "approved"), ("zoning-parcels", "pending")}
        assert any(a.state == "refused" and a.reason for a in apps)
        approved = next(a for a in apps if a.state == "approved")
        assert approved.decided_by == "ndrc_admin" and approved.credit_code
        assert s.scalar(select(func.count()).select_from(AccessKey)) == 1
        assert applications.key_valid(s, od.key, credit.id)
        assert not applications.key_valid(s, od.key, datasets["zoning-parcels"].id)
        before = s.scalar(select(func.count()).select_from(AuditRecord))

    again = seed.build(settings, scale=SCALE)
    assert again.opendata is not None and again.opendata.created == 0 and again.opendata.key is None
    assert again.opendata.skipped == len(published) + 2
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditRecord)) == before
