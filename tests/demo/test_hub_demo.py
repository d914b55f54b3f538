"""The demo city's data hub: catalogs for a dozen bureaus, registries of fake but valid residents
and companies, sharing requests in every state, and the issue's scenario over HTTP — 市交通局
reads the fields 市公安局 granted, is refused the rest, and 市公安局's auditor sees each read with
its purpose. A second build creates nothing."""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from stdnum.cn import ric

from cityos.core import crypto
from cityos.core.access import SYSTEM
from cityos.core.identifiers import validate_citizen_id, validate_credit_code
from cityos.core.models import AuditRecord
from cityos.core.settings import Settings
from cityos.demo import data, hub_data, hub_rows, hub_seed, hub_sites, seed
from cityos.hub import registries, service, sharing, stats, store
from cityos.hub.models import Grant, Resource, ShareRequest

SCALE = 0.0005  # 500 residents, 100 companies, a few dozen rows of everything else
BUREAUS = {"gaj", "hbj", "jtj", "mzj", "wjw", "jyj", "ghj", "zjj", "fgw", "xzzfj", "zwb", "lfw"}


# -- the catalog as data ------------------------------------------------------------------------


def test_catalog_covers_the_bureaus_with_a_realistic_sharing_rate() -> None:
    datasets = hub_data.datasets()
    bureau_codes = {f"{data.CITY_CODE}-{b[0]}" for b in data.BUREAUS}
    per_bureau = Counter(d.bureau for d in datasets)
    assert set(per_bureau) == BUREAUS and all(2 <= n <= 6 for n in per_bureau.values())
    assert {d.department for d in datasets} <= bureau_codes
    assert len({d.name for d in datasets}) == len(datasets)
    counted = [d for d in datasets if not d.secret]
    shared = sum(d.share != "none" for d in counted) + len(hub_data.REGISTRIES)
    assert 0.88 <= shared / (len(counted) + len(hub_data.REGISTRIES)) <= 0.95
    for d in datasets:
        if d.share in ("conditional", "none"):
            assert d.condition and d.basis, d.name
        assert any(c.key for c in d.cols), d.name
        for c in d.cols:
            if c.type == "citizen_id":
                assert c.sensitivity == "sensitive", (d.name, c.name)
    total = sum(d.rows for d in datasets) + sum(r.rows for r in hub_data.REGISTRIES)
    assert total >= 2_000_000


def test_every_column_generator_compiles_and_every_request_names_real_items() -> None:
    world = hub_seed.make_world(SCALE)
    names = {d.name: d for d in hub_data.datasets()}
    for d in hub_data.datasets():
        assert hub_seed.kind_of(d.name) in hub_seed.ROWS, d.name
        if d.maker == "generic":
            for c in d.cols:
                hub_rows.compile_gen(c, world)
        for r in d.related:
            assert r in names or r in registries.REGISTRIES, (d.name, r)
    for ask in hub_data.asks():
        items = ({i.name for i in registries.REGISTRIES[ask.dataset].items} if ask.dataset in registries.REGISTRIES
                 else {c.name for c in names[ask.dataset].cols})
        assert set(ask.fields) <= items and set(ask.granted) <= set(ask.fields), ask
    assert hub_data.showcase().requester == "transport_staff"
    assert names[hub_data.showcase().dataset].bureau == "gaj"


def test_generated_people_and_companies_are_fake_but_valid() -> None:
    people = hub_rows.People(30_000)
    seen = set()
    for i in range(people.n):
        p = people.person(i)
        seen.add(p.id_number)
        assert p.id_number[6:14] == f"{p.birth_date:%Y%m%d}"
        assert p.gender == ("男" if int(p.id_number[16]) % 2 else "女")  # GB 11643: odd for men
    assert len(seen) == people.n
    for i in range(0, people.n, 7):
        assert validate_citizen_id(people.person(i).id_number)
    # At full size too (a sample: the full million takes a while), every district and age band.
    full = hub_rows.People(1_000_000)
    rng = random.Random(1)
    sample = [full.person(rng.randrange(full.n)) for _ in range(3_000)]
    assert {p.district for p in sample} == set(hub_data.DISTRICT_NAMES)
    assert min(p.birth_date.year for p in sample) < 1950 < 2010 < max(p.birth_date.year for p in sample)
    for p in sample:
        ric.validate(p.id_number)
    orgs = hub_rows.Orgs(5_000, people)
    codes = {orgs.org(i).credit_code for i in range(orgs.n)}
    assert len(codes) == orgs.n
    assert all(validate_credit_code(c) == c for c in list(codes)[:500])


def test_air_quality_follows_hj_633_and_the_seasons() -> None:
    assert hub_sites.iaqi("pm25", 35) == 50 and hub_sites.iaqi("pm25", 75) == 100
    assert hub_sites.iaqi("o3", 200) == 100 and hub_sites.iaqi("pm10", 700) == 500
    sites = hub_sites.air_sites(60)
    assert len(sites) == 60 and len({s.code for s in sites}) == 60
    assert all(125.5 < s.lon < 127.8 and 42.5 < s.lat < 44.8 for s in sites)
    def month(m: int) -> list[dict]:
        start = dt.datetime(2024, m, 1, tzinfo=dt.UTC)
        return [hub_sites.reading(s, start + dt.timedelta(hours=h)) for s in sites[::6] for h in range(0, 720, 5)]

    winter, summer = month(1), month(7)
    assert sum(r["pm25"] for r in winter) > 1.5 * sum(r["pm25"] for r in summer)
    assert max(r["o3"] for r in summer) > max(r["o3"] for r in winter)
    for r in winter + summer:
        assert r["aqi"] == max(hub_sites.iaqi(p, r[p]) for p in hub_sites.BREAKPOINTS)
        assert (r["primary"] is None) == (r["aqi"] <= 50)


def test_a_chunk_makes_the_same_rows_in_any_process(keyring: crypto.Keyring) -> None:
    world = hub_seed.make_world(0.025)  # 25,000 residents: three chunks
    fields = tuple(store.Field(i.name, i.type, i.sensitivity == "sensitive", i.indexed)
                   for i in registries.REGISTRIES["population"].items)
    work = [hub_seed.Chunk("population", world.scale, world.now, a, min(a + hub_seed.BATCH, 25_000),
                           (1, fields, ("id_number",))) for a in range(0, 25_000, hub_seed.BATCH)]
    pool = hub_seed.Encoders(2)
    try:
        there = list(pool.map(work))
        assert pool.pool is not None  # worker processes did the work
    finally:
        pool.close()
    here = list(hub_seed.Encoders(1).map(work))

    def keys_and_hashes(batches: list) -> list[tuple[str, str]]:  # ciphertexts differ by nonce
        return [(row[0], row[1]) for batch in batches for row in batch]

    assert keys_and_hashes(here) == keys_and_hashes(there)
    assert len(set(keys_and_hashes(here))) == 25_000


# -- the build ------------------------------------------------------------------------------------


def _login(client, username: str, password: str) -> dict[str, str]:
    r = client.post("/api/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def _audit_count(s: Session) -> int:
    return s.scalar(select(func.count()).select_from(AuditRecord)) or 0


def test_demo_builds_the_data_hub_and_the_scenario_works_over_http(
    settings: Settings, sessions: sessionmaker[Session], client
) -> None:
    report = seed.build(settings, scale=SCALE)
    hub = report.hub
    assert hub is not None
    assert hub.resources_created == len(hub_data.datasets()) + len(hub_data.REGISTRIES)
    assert hub.rows > 2_000 and hub.requests_created >= 12 and hub.reads >= 5
    ask = hub_data.showcase()

    with sessions() as s:
        resources = {r.name: r for r in s.scalars(select(Resource))}
        departments = {r.department.code for r in resources.values()}
        assert {f"{data.CITY_CODE}-{b}" for b in BUREAUS} <= departments
        assert all(resources[d.name].row_count > 0 for d in hub_data.datasets() if d.rows)
        ring = crypto.keyring()
        population = registries.registry_resource(s, "population")
        rows, _, _ = store.select_rows(s.connection(), service.layout_of(population), ring,
                                       fields=["id_number", "gender", "birth_date", "district"], limit=500)
        assert len(rows) == population.row_count == 500
        for r in rows:
            assert validate_citizen_id(r["id_number"]) == r["id_number"]
            assert r["id_number"][6:14] == r["birth_date"].strftime("%Y%m%d")
        companies = registries.registry_resource(s, "legal_person")
        rows, _, _ = store.select_rows(s.connection(), service.layout_of(companies), ring,
                                       fields=["credit_code"], limit=100)
        assert rows and all(validate_credit_code(r["credit_code"]) for r in rows)
        licences = registries.registry_resource(s, "licence")
        assert licences.row_count > 100

        # Requests in every state: granted at once or after review (one narrower than asked),
        # pending, overdue, refused by the catalog and by a decision; a grant revoked.
        requests = list(s.scalars(select(ShareRequest)))
        states = Counter(r.state for r in requests)
        assert states["granted"] >= 3 and states["pending"] >= 2 and states["refused"] >= 2
        assert sum(sharing.is_overdue(r) for r in requests) >= 2
        assert any(r.state == "pending" and not sharing.is_overdue(r) for r in requests)
        assert {r.decided_by == "system" for r in requests if r.state == "refused"} == {True, False}
        assert s.scalar(select(func.count()).select_from(Grant).where(Grant.revoked_at.is_not(None))) == 1
        city = stats.figures(s, SYSTEM)["city"]
        assert 0.88 <= city["sharing_rate"] <= 0.95  # the city's figure, as the hub reports it
        assert city["requests"]["overdue"] >= 2 and city["reads_total"] >= hub.reads
        vehicles = resources[ask.dataset]
        showcase = s.scalar(select(ShareRequest).where(ShareRequest.resource_id == vehicles.id,
                                                       ShareRequest.requested_by == ask.requester))
        assert showcase is not None and showcase.state == "granted" and showcase.decided_by == ask.decider
        grant = s.scalar(select(Grant).where(Grant.request_id == showcase.id))
        assert grant is not None and grant.fields == list(ask.granted)
        code = vehicles.code

    # The scenario: the 市交通局 user reads what was granted, and nothing else.
    transport = _login(client, ask.requester, settings.demo_password)
    url = f"/api/hub/resources/{code}/rows"
    purpose = "公交专用道占用车辆核查"
    r = client.get(url, params={"purpose": purpose, "fields": "plate_no,vehicle_type,district", "limit": 5},
                   headers=transport)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] and set(r.json()["rows"][0]) == {"plate_no", "vehicle_type", "district"}
    r = client.get(url, params={"purpose": purpose, "limit": 5}, headers=transport)
    assert r.status_code == 200 and r.json()["fields"] == list(ask.granted)
    for hidden in set(ask.fields) - set(ask.granted):
        r = client.get(url, params={"purpose": purpose, "fields": f"plate_no,{hidden}"}, headers=transport)
        assert r.status_code == 403, (hidden, r.text)
    r = client.get(url, params={"fields": "plate_no"}, headers=transport)
    assert r.status_code == 422  # no purpose, no read

    # 市公安局's auditor, and the city's, see each read of the data — the demo's own and these —
    # with its purpose.
    for who in ("police_auditor", "auditor"):
        r = client.get("/api/audit", params={"action": "hub.data.read", "actor": ask.requester, "limit": 100},
                       headers=_login(client, who, settings.demo_password))
        assert r.status_code == 200, r.text
        reads = [a for a in r.json()["items"] if a["object_id"] == code and a["outcome"] == "success"]
        assert {a["purpose"] for a in reads} == {purpose, ask.purpose}, who
        assert len(reads) == ask.reads + 2, who

    with sessions() as s:
        before = _audit_count(s)
    again = seed.build(settings, scale=SCALE)
    assert again.created == 0 and again.hub is not None and again.hub.created == 0
    assert again.hub.resources_skipped == hub.resources_created
    with sessions() as s:
        assert _audit_count(s) == before
