"""DCAT-AP 3 mapping (cityos.opendata.dcat): pure, no database.

Graphs are checked against SEMIC's official DCAT-AP 3 SHACL shapes (fetched from PyPI into the
git-ignored cache by `python -m cityos.opendata.shapes`; the module fixture does the same).
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from rdflib import RDF, Graph, Literal, Namespace, URIRef
from rdflib.compare import isomorphic
from rdflib.namespace import DCTERMS, FOAF, SKOS

from cityos.core.errors import Invalid
from cityos.opendata import dcat, shapes
from cityos.opendata.dcat import ADMS, DCAT, GSP, HYDRA, VCARD

# A plain namespace: pytest probes module attributes, and rdflib's XSD warns on unknown names.
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
BASE = "http://127.0.0.1:8000"
EU = "http://publications.europa.eu/resource/authority/"
CATALOG = {
    "title": "吉林市公共数据开放平台", "title_en": "Jilin City Open Data",
    "description": "吉林市各部门依开放计划发布的公共数据。", "homepage": BASE,
    "publisher": {"name": "吉林市政务服务和数字化建设管理局", "url": "http://zwfw.jlcity.gov.cn/"},
    "language": ["zh", "en"],
    "license_url": "https://creativecommons.org/licenses/by/4.0/", "license_title": "CC BY 4.0",
    "issued": "2026-06-01T00:00:00+08:00",
}


def org(**kw: Any) -> dict[str, Any]:
    return {"id": "d-hbj", "name": "220200-hbj", "title": "吉林市生态环境局",
            "credit_code": "11220200013531547K", "email": None, **kw}


def resource(name: str, fmt: str, mimetype: str | None, *, rid: str | None = None) -> dict[str, Any]:
    ext = fmt.lower()
    url = (f"{BASE}/api/3/action/datastore_search?resource_id={name}" if fmt == "API"
           else f"{BASE}/data/dataset/{name}/download.{ext}")
    return {"id": rid or f"{name}-{ext}", "name": f"{name} {fmt}", "format": fmt, "mimetype": mimetype,
            "url": url, "datastore_active": fmt == "API", "description": f"{fmt} 格式"}


def package(name: str, **kw: Any) -> dict[str, Any]:
    pkg: dict[str, Any] = {
        "id": f"uuid-{name}", "name": name, "title": "空气质量日报", "title_en": None,
        "notes": "全市监测站点每日空气质量指数。", "license_id": "CC-BY-4.0",
        "license_title": "知识共享署名 4.0", "license_url": "https://creativecommons.org/licenses/by/4.0/",
        "organization": org(), "groups": [], "tags": [{"name": "空气"}],
        "metadata_created": "2026-11-20T08:00:00+00:00", "metadata_modified": "2026-11-21T08:00:00+00:00",
        "update_cycle": "daily", "open_level": "open", "spatial": None, "bbox": None,
        "temporal_start": None, "temporal_end": None, "resource_code": "301001/000001", "version": 3,
        "row_count": 1234, "fields": [{"id": "district", "title": "区县", "type": "string"}],
        "resources": [resource(name, "API", None, rid=name), resource(name, "CSV", "text/csv")],
    }
    pkg.update(kw)
    return pkg


def with_bbox() -> dict[str, Any]:
    return package(
        "air-quality-daily", title_en="Daily air quality",
        groups=[{"name": "environment", "title": "生态环境", "title_en": "Environment"}],
        tags=[{"name": "空气"}, {"name": "PM2.5"}], spatial="吉林市",
        bbox=[125.67, 42.52, 127.95, 44.67], temporal_start="2026-01-01", temporal_end="2026-12-31",
        organization=org(email="hbj@jlcity.gov.cn"))


def conditional() -> dict[str, Any]:
    return package(
        "bus-card-trips", title="公交刷卡出行记录", notes="按线路与小时汇总的刷卡量。",
        open_level="conditional", update_cycle="realtime", version=1,
        groups=[{"name": "transport", "title": "交通出行", "title_en": "Transport"},
                {"name": "smart-lamps", "title": "智慧路灯", "title_en": None}],
        organization=org(name="220200-jtj", title="吉林市交通运输局", credit_code=None),
        resources=[resource("bus-card-trips", "API", "application/json", rid="bus-card-trips")])


def every_format() -> dict[str, Any]:
    name = "district-boundaries"
    return package(
        name, title="行政区划边界", notes="", update_cycle="yearly", spatial="吉林市",
        groups=[{"name": "urban", "title": "城市建设", "title_en": "Urban"}], temporal_start="2025-01-01",
        resources=[resource(name, "API", None, rid=name), resource(name, "CSV", "text/csv"),
                   resource(name, "XLSX", None), resource(name, "JSON", "application/json"),
                   resource(name, "GeoJSON", None), resource(name, "Parquet", None)])


SAMPLES = (with_bbox, conditional, every_format)


@pytest.fixture(scope="module", autouse=True)
def official_shapes() -> None:
    shapes.fetch()  # a no-op once cached; `make test` fetches before pytest runs


def ds_iri(name: str) -> URIRef:
    return URIRef(f"{BASE}/dataset/{name}")


def eu(path: str) -> URIRef:
    return URIRef(EU + path)


# -- conformance ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", SAMPLES, ids=lambda f: f.__name__)
def test_dataset_graph_conforms_to_dcat_ap_3(make: Any) -> None:
    conforms, report = dcat.validate(dcat.dataset_graph(make(), BASE))
    assert conforms, report


def test_catalog_graph_conforms_to_dcat_ap_3() -> None:
    g = dcat.catalog_graph(CATALOG, [f() for f in SAMPLES], BASE, page=1, page_size=3, total=3)
    conforms, report = dcat.validate(g)
    assert conforms, report
    cat = URIRef(f"{BASE}/catalog")
    assert set(g.objects(cat, DCAT.dataset)) == {ds_iri(f()["name"]) for f in SAMPLES}


def test_shapes_are_the_official_dcat_ap_3_file() -> None:
    path = shapes.shapes_path()
    assert path.name == "dcat-ap-SHACL.jsonld"
    targets = {str(t) for t in shapes.shapes_graph().objects(None, URIRef("http://www.w3.org/ns/shacl#targetClass"))}
    assert {str(DCAT.Catalog), str(DCAT.Dataset), str(DCAT.Distribution), str(DCAT.DataService)} <= targets
    shape_ids = {str(s) for s in shapes.shapes_graph().subjects(RDF.type, URIRef("http://www.w3.org/ns/shacl#NodeShape"))}
    assert "https://semiceu.github.io/DCAT-AP/releases/3.0.0/shacl/dcat-ap-SHACL.ttl#dcat:DatasetShape" in shape_ids


def test_broken_package_names_the_properties() -> None:
    broken = package("broken", title=None, title_en=None, metadata_modified="2026-13-45 afternoon",
                     temporal_start="soon")
    conforms, report = dcat.validate(dcat.dataset_graph(broken, BASE))
    assert not conforms
    assert "Result Path: dct:title" in report  # official shape: title is mandatory
    assert "Result Path: dct:modified" in report  # CityOS supplement: well-formed temporal literal
    assert "Result Path: dcat:startDate" in report


def test_distribution_without_access_url_is_not_conformant() -> None:
    g = dcat.dataset_graph(with_bbox(), BASE)
    g.remove((None, DCAT.accessURL, None))
    conforms, report = dcat.validate(g)
    assert not conforms and "Result Path: dcat:accessURL" in report


def test_catalog_without_publisher_is_not_conformant() -> None:
    g = dcat.catalog_graph(CATALOG, [with_bbox()], BASE, page=1, page_size=10, total=1)
    g.remove((URIRef(f"{BASE}/catalog"), DCTERMS.publisher, None))
    conforms, report = dcat.validate(g)
    assert not conforms and "Result Path: dct:publisher" in report


# -- mapping ------------------------------------------------------------------------------------------


def test_dataset_properties() -> None:
    g = dcat.dataset_graph(with_bbox(), BASE)
    ds = ds_iri("air-quality-daily")
    assert (ds, RDF.type, DCAT.Dataset) in g
    assert set(g.objects(ds, DCTERMS.title)) == {Literal("空气质量日报", lang="zh"),
                                                 Literal("Daily air quality", lang="en")}
    assert g.value(ds, DCTERMS.identifier) == Literal("uuid-air-quality-daily")
    assert set(g.objects(ds, DCAT.keyword)) == {Literal("空气", lang="zh"), Literal("PM2.5", lang="zh")}
    assert g.value(ds, DCAT.theme) == eu("data-theme/ENVI")
    assert g.value(ds, DCTERMS.accrualPeriodicity) == eu("frequency/DAILY")
    assert g.value(ds, DCTERMS.accessRights) == eu("access-right/PUBLIC")
    assert g.value(ds, DCAT.version) == Literal("3")
    issued, modified = g.value(ds, DCTERMS.issued), g.value(ds, DCTERMS.modified)
    assert issued.datatype == XSD.dateTime and modified.datatype == XSD.dateTime
    landing = g.value(ds, DCAT.landingPage)
    assert landing == URIRef(f"{BASE}/data/dataset/air-quality-daily")
    assert (landing, RDF.type, FOAF.Document) in g
    ident = g.value(ds, ADMS.identifier)
    assert g.value(ident, SKOS.notation) == Literal("301001/000001")
    # publisher and contact point
    agent = g.value(ds, DCTERMS.publisher)
    assert (agent, RDF.type, FOAF.Agent) in g
    assert g.value(agent, FOAF.name) == Literal("吉林市生态环境局", lang="zh")
    assert g.value(agent, DCTERMS.type) == URIRef("http://purl.org/adms/publishertype/LocalAuthority")
    contact = g.value(ds, DCAT.contactPoint)
    assert (contact, RDF.type, VCARD.Organization) in g
    assert g.value(contact, VCARD.fn) == Literal("吉林市生态环境局", lang="zh")
    assert g.value(contact, VCARD.hasEmail) == URIRef("mailto:hbj@jlcity.gov.cn")
    assert g.value(contact, VCARD.hasURL) == URIRef(f"{BASE}/data/organization/220200-hbj")
    # space and time
    loc = g.value(ds, DCTERMS.spatial)
    assert (loc, RDF.type, DCTERMS.Location) in g
    bbox = g.value(loc, DCAT.bbox)
    assert bbox.datatype == GSP.wktLiteral
    assert str(bbox) == "POLYGON((125.67 42.52, 127.95 42.52, 127.95 44.67, 125.67 44.67, 125.67 42.52))"
    period = g.value(ds, DCTERMS.temporal)
    assert g.value(period, DCAT.startDate) == Literal("2026-01-01", datatype=XSD.date)
    assert g.value(period, DCAT.endDate) == Literal("2026-12-31", datatype=XSD.date)


def test_conditional_dataset() -> None:
    g = dcat.dataset_graph(conditional(), BASE)
    ds = ds_iri("bus-card-trips")
    assert g.value(ds, DCTERMS.accessRights) == eu("access-right/RESTRICTED")
    assert g.value(ds, DCTERMS.accrualPeriodicity) == eu("frequency/UPDATE_CONT")
    # transport → TRAN; a topic the table doesn't know → GOVE
    assert set(g.objects(ds, DCAT.theme)) == {eu("data-theme/TRAN"), eu("data-theme/GOVE")}
    assert g.value(ds, DCTERMS.spatial) is None and g.value(ds, DCTERMS.temporal) is None
    contact = g.value(ds, DCAT.contactPoint)
    assert g.value(contact, VCARD.hasEmail) is None
    assert g.value(g.value(ds, DCTERMS.publisher), DCTERMS.identifier) is None


def test_spatial_label_without_bbox() -> None:
    g = dcat.dataset_graph(every_format(), BASE)
    loc = g.value(ds_iri("district-boundaries"), DCTERMS.spatial)
    assert g.value(loc, SKOS.prefLabel) == Literal("吉林市", lang="zh")
    assert g.value(loc, DCAT.bbox) is None


def test_every_format_distribution() -> None:
    g = dcat.dataset_graph(every_format(), BASE)
    ds = ds_iri("district-boundaries")
    dists = {str(g.value(d, DCTERMS.title)).split()[-1]: d for d in g.objects(ds, DCAT.distribution)}
    assert set(dists) == {"API", "CSV", "XLSX", "JSON", "GeoJSON", "Parquet"}
    expected = {  # format: (EU file type, IANA media type)
        "CSV": ("CSV", "text/csv"),
        "XLSX": ("XLSX", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
        "JSON": ("JSON", "application/json"),
        "GeoJSON": ("GEOJSON", "application/geo+json"),
        "Parquet": ("PARQUET", "application/vnd.apache.parquet"),
    }
    for fmt, (file_type, media) in expected.items():
        d = dists[fmt]
        assert g.value(d, DCTERMS.format) == eu(f"file-type/{file_type}")
        assert g.value(d, DCAT.mediaType) == URIRef(f"https://www.iana.org/assignments/media-types/{media}")
        assert g.value(d, DCAT.downloadURL) == g.value(d, DCAT.accessURL)
        assert g.value(d, DCAT.accessService) is None
        lic = g.value(d, DCTERMS.license)
        assert lic == URIRef("https://creativecommons.org/licenses/by/4.0/")
        assert (lic, RDF.type, DCTERMS.LicenseDocument) in g
        assert g.value(d, DCTERMS.description) == Literal(f"{fmt} 格式", lang="zh")
    api = dists["API"]
    assert g.value(api, DCAT.downloadURL) is None and g.value(api, DCTERMS.format) is None
    service = g.value(api, DCAT.accessService)
    assert (service, RDF.type, DCAT.DataService) in g
    assert g.value(service, DCAT.endpointURL) == g.value(api, DCAT.accessURL)
    assert g.value(service, DCTERMS.title) is not None
    assert g.value(service, DCAT.servesDataset) == ds
    # no notes: the title stands in for the mandatory description
    assert g.value(ds, DCTERMS.description) == Literal("行政区划边界", lang="zh")


def test_catalog_properties() -> None:
    g = dcat.catalog_graph(CATALOG, [with_bbox(), conditional()], BASE, page=1, page_size=10, total=2)
    cat = URIRef(f"{BASE}/catalog")
    assert (cat, RDF.type, DCAT.Catalog) in g
    assert set(g.objects(cat, DCTERMS.title)) == {Literal("吉林市公共数据开放平台", lang="zh"),
                                                  Literal("Jilin City Open Data", lang="en")}
    assert g.value(cat, DCTERMS.description) is not None
    assert set(g.objects(cat, DCTERMS.language)) == {eu("language/ZHO"), eu("language/ENG")}
    assert g.value(cat, FOAF.homepage) == URIRef(BASE)
    assert g.value(cat, DCTERMS.license) == URIRef("https://creativecommons.org/licenses/by/4.0/")
    assert g.value(cat, DCAT.themeTaxonomy) == eu("data-theme")
    assert g.value(cat, DCTERMS.issued).datatype == XSD.dateTime
    assert g.value(cat, DCTERMS.modified) == Literal("2026-11-21T08:00:00+00:00", datatype=XSD.dateTime)
    publisher = g.value(cat, DCTERMS.publisher)
    assert g.value(publisher, FOAF.name) == Literal("吉林市政务服务和数字化建设管理局", lang="zh")
    assert g.value(publisher, DCTERMS.type) == URIRef("http://purl.org/adms/publishertype/LocalAuthority")
    assert not list(g.subjects(RDF.type, HYDRA.PagedCollection))  # one page: no paging


# -- paging -------------------------------------------------------------------------------------------


def test_paging_triples_when_total_exceeds_page_size() -> None:
    g = dcat.catalog_graph(CATALOG, [conditional()], BASE, page=2, page_size=1, total=3, fmt="ttl")
    page = URIRef(f"{BASE}/catalog.ttl?page=2")
    assert (page, RDF.type, HYDRA.PagedCollection) in g
    assert g.value(page, HYDRA.totalItems) == Literal(3, datatype=XSD.integer)
    assert g.value(page, HYDRA.itemsPerPage) == Literal(1, datatype=XSD.integer)
    assert g.value(page, HYDRA.firstPage) == URIRef(f"{BASE}/catalog.ttl?page=1")
    assert g.value(page, HYDRA.lastPage) == URIRef(f"{BASE}/catalog.ttl?page=3")
    assert g.value(page, HYDRA.nextPage) == URIRef(f"{BASE}/catalog.ttl?page=3")
    assert g.value(page, HYDRA.previousPage) == URIRef(f"{BASE}/catalog.ttl?page=1")
    conforms, report = dcat.validate(g)
    assert conforms, report


def test_paging_ends() -> None:
    first = dcat.catalog_graph(CATALOG, [], BASE, page=1, page_size=2, total=3)
    page1 = URIRef(f"{BASE}/catalog.jsonld?page=1")
    assert g_has(first, page1, HYDRA.nextPage) and not g_has(first, page1, HYDRA.previousPage)
    last = dcat.catalog_graph(CATALOG, [], BASE, page=2, page_size=2, total=3)
    page2 = URIRef(f"{BASE}/catalog.jsonld?page=2")
    assert g_has(last, page2, HYDRA.previousPage) and not g_has(last, page2, HYDRA.nextPage)


def g_has(g: Graph, s: URIRef, p: URIRef) -> bool:
    return g.value(s, p) is not None


def test_bad_paging_arguments() -> None:
    with pytest.raises(Invalid):
        dcat.catalog_graph(CATALOG, [], BASE, page=0, page_size=10, total=0)
    with pytest.raises(Invalid):
        dcat.catalog_graph(CATALOG, [], BASE, page=1, page_size=0, total=0)


# -- serialisations -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "media_type", "rdf_format"), [
    ("jsonld", "application/ld+json", "json-ld"),
    ("ttl", "text/turtle", "turtle"),
    ("rdf", "application/rdf+xml", "xml"),
])
def test_serializations_round_trip(fmt: str, media_type: str, rdf_format: str) -> None:
    g = dcat.catalog_graph(CATALOG, [f() for f in SAMPLES], BASE, page=1, page_size=2, total=5)
    body, mt = dcat.serialize(g, fmt)
    assert mt == media_type and isinstance(body, bytes)
    back = Graph().parse(data=body, format=rdf_format)
    assert len(back) == len(g) and isomorphic(back, g)
    conforms, report = dcat.validate(back)
    assert conforms, report


def test_jsonld_is_compact() -> None:
    body, _ = dcat.serialize(dcat.dataset_graph(with_bbox(), BASE), "jsonld")
    doc = json.loads(body)
    ctx = doc["@context"]
    for prefix in ("dcat", "dct", "foaf", "vcard", "adms", "xsd", "hydra", "locn", "gsp"):
        assert prefix in ctx
    text = body.decode("utf-8")
    assert "dcat:Dataset" in text and "空气质量日报" in text  # compact terms, readable Chinese


def test_unknown_format_is_refused() -> None:
    with pytest.raises(Invalid):
        dcat.serialize(Graph(), "n3")


def test_mapping_leaves_input_untouched() -> None:
    pkg = with_bbox()
    before = copy.deepcopy(pkg)
    dcat.dataset_graph(pkg, BASE)
    assert pkg == before


def test_topic_theme_table() -> None:
    assert dcat.topic_theme("environment").iri == eu("data-theme/ENVI")
    assert dcat.topic_theme("no-such-topic").iri == eu("data-theme/GOVE")
    assert set(dcat.TOPIC_THEMES.values()) == set(dcat.THEMES)
