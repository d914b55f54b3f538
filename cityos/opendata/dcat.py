"""DCAT-AP 3 (欧盟数据目录应用规范 DCAT-AP 3.0) for the open-data portal: CKAN package dicts → RDF.

Pure mapping, no database and no settings: the routes hand over the public package dicts
(CKAN's shape), the catalog's own description and the base URL that IRIs are minted under, and
serve what `serialize` returns. `validate` checks a graph against SEMIC's DCAT-AP 3 SHACL shapes
(see `cityos.opendata.shapes` for where they come from).

Every EU-vocabulary value we use (data themes, frequencies, languages, file types, access
rights, media types, publisher types) is typed and labelled in the output itself: the official
shapes check `sh:class` (dct:Frequency, dct:LinguisticSystem, skos:Concept with a prefLabel...)
on the graph they are given, and a city's network cannot load the EU authority tables.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pyshacl
from rdflib import RDF, RDFS, XSD, BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCTERMS, FOAF, SKOS
from rdflib.term import Node

from cityos.core.errors import Invalid
from cityos.opendata import shapes

# rdflib's DCAT namespace predates DCAT 3 (no dcat:version): a plain one.
DCAT = Namespace("http://www.w3.org/ns/dcat#")
VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
LOCN = Namespace("http://www.w3.org/ns/locn#")
GSP = Namespace("http://www.opengis.net/ont/geosparql#")

PREFIXES = {"dcat": DCAT, "dct": DCTERMS, "foaf": FOAF, "vcard": VCARD, "adms": ADMS, "xsd": XSD,
            "hydra": HYDRA, "locn": LOCN, "gsp": GSP, "skos": SKOS, "rdfs": RDFS}
CONTEXT = {prefix: str(ns) for prefix, ns in PREFIXES.items()}

EU = "http://publications.europa.eu/resource/authority/"
IANA_MEDIA = "https://www.iana.org/assignments/media-types/"
ZH, EN = "zh", "en"


# -- vocabularies -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One value of a controlled vocabulary: its IRI, the class the shapes expect, its labels."""

    iri: URIRef
    cls: URIRef
    en: str
    zh: str


def _eu(table: str, code: str, cls: URIRef, en: str, zh: str) -> Term:
    return Term(URIRef(f"{EU}{table}/{code}"), cls, en, zh)


THEME_SCHEME = Term(URIRef(EU + "data-theme"), SKOS.ConceptScheme, "Data theme", "数据主题")
THEMES = {code: _eu("data-theme", code, SKOS.Concept, en, zh) for code, en, zh in (
    ("AGRI", "Agriculture, fisheries, forestry and food", "农业、渔业、林业和食品"),
    ("ECON", "Economy and finance", "经济和金融"),
    ("EDUC", "Education, culture and sport", "教育、文化和体育"),
    ("ENER", "Energy", "能源"),
    ("ENVI", "Environment", "环境"),
    ("GOVE", "Government and public sector", "政府和公共部门"),
    ("HEAL", "Health", "卫生健康"),
    ("INTR", "International issues", "国际事务"),
    ("JUST", "Justice, legal system and public safety", "司法、法律和公共安全"),
    ("REGI", "Regions and cities", "区域和城市"),
    ("SOCI", "Population and society", "人口和社会"),
    ("TECH", "Science and technology", "科学和技术"),
    ("TRAN", "Transport", "交通运输"),
)}
DEFAULT_THEME = "GOVE"
# Our topics (主题, CKAN groups) by URL name → EU data theme; unknown topics fall back to GOVE.
TOPIC_THEMES = {
    "agriculture": "AGRI", "forestry": "AGRI", "fishery": "AGRI", "food": "AGRI", "food-safety": "AGRI",
    "economy": "ECON", "finance": "ECON", "commerce": "ECON", "business": "ECON", "enterprise": "ECON",
    "industry": "ECON", "tax": "ECON", "tourism": "ECON", "market-regulation": "ECON",
    "education": "EDUC", "culture": "EDUC", "sport": "EDUC", "sports": "EDUC",
    "energy": "ENER", "utilities": "ENER",
    "environment": "ENVI", "ecology": "ENVI", "weather": "ENVI", "meteorology": "ENVI", "water": "ENVI",
    "government": "GOVE", "public-service": "GOVE", "administration": "GOVE", "gov-affairs": "GOVE",
    "health": "HEAL", "medical": "HEAL", "healthcare": "HEAL",
    "international": "INTR", "foreign-affairs": "INTR",
    "justice": "JUST", "public-safety": "JUST", "safety": "JUST", "emergency": "JUST", "credit": "JUST",
    "urban": "REGI", "city": "REGI", "planning": "REGI", "land": "REGI", "housing": "REGI",
    "construction": "REGI", "geography": "REGI", "regions": "REGI",
    "social": "SOCI", "society": "SOCI", "population": "SOCI", "civil-affairs": "SOCI",
    "employment": "SOCI", "social-security": "SOCI", "welfare": "SOCI",
    "science": "TECH", "technology": "TECH",
    "transport": "TRAN", "traffic": "TRAN", "transportation": "TRAN",
}
FREQUENCIES = {cycle: _eu("frequency", code, DCTERMS.Frequency, en, zh) for cycle, code, en, zh in (
    ("realtime", "UPDATE_CONT", "continuously updated", "实时"),
    ("daily", "DAILY", "daily", "每日"),
    ("weekly", "WEEKLY", "weekly", "每周"),
    ("monthly", "MONTHLY", "monthly", "每月"),
    ("quarterly", "QUARTERLY", "quarterly", "每季度"),
    ("yearly", "ANNUAL", "annual", "每年"),
    ("irregular", "IRREG", "irregular", "不定期"),
)}
ACCESS_RIGHTS = {
    "open": _eu("access-right", "PUBLIC", DCTERMS.RightsStatement, "public", "无条件开放"),
    "conditional": _eu("access-right", "RESTRICTED", DCTERMS.RightsStatement, "restricted", "有条件开放"),
}
LANGUAGES = {
    "zh": _eu("language", "ZHO", DCTERMS.LinguisticSystem, "Chinese", "中文"),
    "en": _eu("language", "ENG", DCTERMS.LinguisticSystem, "English", "英语"),
}
PUBLISHER_TYPES = {code: Term(URIRef(f"http://purl.org/adms/publishertype/{code}"), SKOS.Concept, en, zh)
                   for code, en, zh in (("LocalAuthority", "Local Authority", "地方政府机构"),
                                        ("NationalAuthority", "National authority", "国家机关"),
                                        ("Company", "Company", "企业"))}
DEFAULT_PUBLISHER_TYPE = "LocalAuthority"


@dataclass(frozen=True)
class FileFormat:
    """A download format: its EU file-type and the IANA media type used when the resource has none."""

    file_type: Term
    media_type: str


FORMATS = {fmt.upper(): FileFormat(_eu("file-type", code, DCTERMS.MediaTypeOrExtent, code, code), media)
           for fmt, code, media in (
    ("CSV", "CSV", "text/csv"),
    ("XLSX", "XLSX", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("JSON", "JSON", "application/json"),
    ("GeoJSON", "GEOJSON", "application/geo+json"),
    ("Parquet", "PARQUET", "application/vnd.apache.parquet"),
)}
API_FORMAT = "API"  # served through a dcat:DataService, not downloaded

SERIALIZATIONS = {  # fmt: (rdflib format, media type)
    "jsonld": ("json-ld", "application/ld+json"),
    "ttl": ("turtle", "text/turtle"),
    "rdf": ("pretty-xml", "application/rdf+xml"),
}


# -- helpers --------------------------------------------------------------------------------------------


def _new_graph() -> Graph:
    graph = Graph(bind_namespaces="core")
    for prefix, ns in PREFIXES.items():
        graph.bind(prefix, ns)
    return graph


def _iri(base_url: str, *parts: str) -> URIRef:
    return URIRef("/".join([base_url.rstrip("/"), *(quote(p, safe="") for p in parts)]))


def _term(graph: Graph, term: Term) -> URIRef:
    """Add a vocabulary value with the class and labels the shapes look for; return its IRI."""
    graph.add((term.iri, RDF.type, term.cls))
    if term.cls == SKOS.ConceptScheme:
        graph.add((term.iri, DCTERMS.title, Literal(term.en, lang=EN)))
    graph.add((term.iri, SKOS.prefLabel, Literal(term.en, lang=EN)))
    graph.add((term.iri, SKOS.prefLabel, Literal(term.zh, lang=ZH)))
    return term.iri


def _text(graph: Graph, subject: Node, prop: URIRef, value: Any, lang: str = ZH) -> None:
    if value is not None and str(value).strip():
        graph.add((subject, prop, Literal(str(value).strip(), lang=lang)))


def _typed_iri(graph: Graph, url: Any, cls: URIRef) -> URIRef | None:
    if not url:
        return None
    iri = URIRef(str(url))
    graph.add((iri, RDF.type, cls))
    return iri


def _datetime(value: Any) -> Literal | None:
    """An xsd:dateTime; a value that isn't one stays as given (ill-typed) for `validate` to name."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed: dt.datetime | None = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            parsed = None
    if parsed is None:
        return Literal(str(value), datatype=XSD.dateTime)
    if parsed.tzinfo is None:  # storage is UTC
        parsed = parsed.replace(tzinfo=dt.UTC)
    return Literal(parsed.isoformat(), datatype=XSD.dateTime)


def _date(value: Any) -> Literal | None:
    """An xsd:date; a value that isn't one stays as given (ill-typed) for `validate` to name."""
    if value is None or value == "":
        return None
    try:
        return Literal(dt.date.fromisoformat(str(value)[:10]).isoformat(), datatype=XSD.date)
    except ValueError:
        return Literal(str(value), datatype=XSD.date)


def _agent(graph: Graph, iri: URIRef, name: Any, *, kind: str = DEFAULT_PUBLISHER_TYPE,
           name_en: Any = None, identifier: Any = None, homepage: Any = None) -> URIRef:
    graph.add((iri, RDF.type, FOAF.Agent))
    graph.add((iri, RDF.type, FOAF.Organization))
    _text(graph, iri, FOAF.name, name)
    _text(graph, iri, FOAF.name, name_en, EN)
    publisher_type = PUBLISHER_TYPES.get(kind) or PUBLISHER_TYPES[DEFAULT_PUBLISHER_TYPE]
    graph.add((iri, DCTERMS.type, _term(graph, publisher_type)))
    if identifier:
        graph.add((iri, DCTERMS.identifier, Literal(str(identifier))))
    if homepage:
        graph.add((iri, FOAF.homepage, URIRef(str(homepage))))
    return iri


# -- dataset ------------------------------------------------------------------------------------------


def dataset_iri(base_url: str, name: str) -> URIRef:
    """The dataset's IRI (what /dataset/{name}.jsonld|.ttl|.rdf describes)."""
    return _iri(base_url, "dataset", name)


def topic_theme(topic: str) -> Term:
    """The EU data theme for one of our topics (GOVE for a topic the table doesn't know)."""
    return THEMES[TOPIC_THEMES.get(topic, DEFAULT_THEME)]


def add_dataset(graph: Graph, pkg: Mapping[str, Any], base_url: str) -> URIRef:
    """Describe one CKAN package as a dcat:Dataset in `graph`; return the dataset's IRI."""
    name = str(pkg["name"])
    ds = dataset_iri(base_url, name)
    g = graph
    g.add((ds, RDF.type, DCAT.Dataset))
    _text(g, ds, DCTERMS.title, pkg.get("title"))
    _text(g, ds, DCTERMS.title, pkg.get("title_en"), EN)
    # DCAT-AP requires a description; a package without notes repeats its title.
    _text(g, ds, DCTERMS.description, pkg.get("notes") or pkg.get("title"))
    if pkg.get("id"):
        g.add((ds, DCTERMS.identifier, Literal(str(pkg["id"]))))
    if pkg.get("resource_code"):  # the national catalog code (公共数据资源目录编码)
        ident = BNode()
        g.add((ds, ADMS.identifier, ident))
        g.add((ident, RDF.type, ADMS.Identifier))
        g.add((ident, SKOS.notation, Literal(str(pkg["resource_code"]))))
        g.add((ident, ADMS.schemaAgency, Literal("公共数据资源目录", lang=ZH)))
    if pkg.get("version") is not None:
        g.add((ds, DCAT.version, Literal(str(pkg["version"]))))
    for prop, key in ((DCTERMS.issued, "metadata_created"), (DCTERMS.modified, "metadata_modified")):
        if (value := _datetime(pkg.get(key))) is not None:
            g.add((ds, prop, value))
    landing = _iri(base_url, "data", "dataset", name)
    g.add((ds, DCAT.landingPage, landing))
    g.add((landing, RDF.type, FOAF.Document))
    g.add((ds, DCTERMS.language, _term(g, LANGUAGES["zh"])))
    if pkg.get("title_en"):
        g.add((ds, DCTERMS.language, _term(g, LANGUAGES["en"])))
    for tag in pkg.get("tags") or ():
        _text(g, ds, DCAT.keyword, tag.get("name"))
    for term in dict.fromkeys(topic_theme(str(t.get("name") or "")) for t in pkg.get("groups") or ()):
        theme = _term(g, term)
        g.add((theme, SKOS.inScheme, _term(g, THEME_SCHEME)))
        g.add((ds, DCAT.theme, theme))
    if (freq := FREQUENCIES.get(pkg.get("update_cycle") or "")) is not None:
        g.add((ds, DCTERMS.accrualPeriodicity, _term(g, freq)))
    if (rights := ACCESS_RIGHTS.get(pkg.get("open_level") or "")) is not None:
        g.add((ds, DCTERMS.accessRights, _term(g, rights)))
    _add_spatial(g, ds, pkg.get("spatial"), pkg.get("bbox"))
    _add_temporal(g, ds, pkg.get("temporal_start"), pkg.get("temporal_end"))
    _add_organization(g, ds, pkg.get("organization"), base_url)
    seen: set[str] = set()
    for res in pkg.get("resources") or ():
        _add_distribution(g, ds, name, pkg, res, base_url, landing, seen)
    return ds


def _add_spatial(g: Graph, ds: URIRef, label: Any, bbox: Any) -> None:
    if not label and not bbox:
        return
    loc = BNode()
    g.add((ds, DCTERMS.spatial, loc))
    g.add((loc, RDF.type, DCTERMS.Location))
    _text(g, loc, SKOS.prefLabel, label)
    if bbox:
        w, s, e, n = (float(v) for v in bbox)
        wkt = f"POLYGON(({w} {s}, {e} {s}, {e} {n}, {w} {n}, {w} {s}))"  # lon lat, CRS84
        g.add((loc, DCAT.bbox, Literal(wkt, datatype=GSP.wktLiteral)))


def _add_temporal(g: Graph, ds: URIRef, start: Any, end: Any) -> None:
    if not start and not end:
        return
    period = BNode()
    g.add((ds, DCTERMS.temporal, period))
    g.add((period, RDF.type, DCTERMS.PeriodOfTime))
    for prop, value in ((DCAT.startDate, start), (DCAT.endDate, end)):
        if (lit := _date(value)) is not None:
            g.add((period, prop, lit))


def _add_organization(g: Graph, ds: URIRef, org: Mapping[str, Any] | None, base_url: str) -> None:
    if not org or not org.get("name"):
        return
    agent = _agent(g, _iri(base_url, "organization", str(org["name"])), org.get("title"),
                   identifier=org.get("credit_code"))  # 统一社会信用代码
    g.add((ds, DCTERMS.publisher, agent))
    contact = _iri(base_url, "organization", str(org["name"]), "contact")
    g.add((ds, DCAT.contactPoint, contact))
    g.add((contact, RDF.type, VCARD.Organization))
    g.add((contact, RDF.type, VCARD.Kind))  # the shapes' class; stated, as no vCard ontology is loaded
    _text(g, contact, VCARD.fn, org.get("title") or org["name"])
    if org.get("email"):
        g.add((contact, VCARD.hasEmail, URIRef(f"mailto:{org['email']}")))
    g.add((contact, VCARD.hasURL, _iri(base_url, "data", "organization", str(org["name"]))))


def _add_distribution(g: Graph, ds: URIRef, name: str, pkg: Mapping[str, Any], res: Mapping[str, Any],
                      base_url: str, landing: URIRef, seen: set[str]) -> None:
    fmt = str(res.get("format") or "").strip()
    key = str(res.get("id") or len(seen))
    if key in seen:  # CKAN ids are unique, but a hand-made dict may repeat one
        key = f"{key}-{fmt.lower() or len(seen)}"
    seen.add(key)
    dist = _iri(base_url, "dataset", name, "distribution", key)
    g.add((ds, DCAT.distribution, dist))
    g.add((dist, RDF.type, DCAT.Distribution))
    _text(g, dist, DCTERMS.title, res.get("name"))
    _text(g, dist, DCTERMS.description, res.get("description"))
    # accessURL is mandatory; with no URL of its own, the landing page is the way in.
    url = URIRef(str(res["url"])) if res.get("url") else landing
    g.add((dist, DCAT.accessURL, url))
    if (lic := _typed_iri(g, pkg.get("license_url"), DCTERMS.LicenseDocument)) is not None:
        g.add((dist, DCTERMS.license, lic))
        _text(g, lic, RDFS.label, pkg.get("license_title"))
    known = FORMATS.get(fmt.upper())
    media = res.get("mimetype") or (known.media_type if known else None)
    if media:
        media_iri = URIRef(IANA_MEDIA + str(media))
        g.add((dist, DCAT.mediaType, media_iri))
        g.add((media_iri, RDF.type, DCTERMS.MediaType))
    if fmt.upper() == API_FORMAT:
        service = _iri(base_url, "dataset", name, "service", key)
        g.add((dist, DCAT.accessService, service))
        g.add((service, RDF.type, DCAT.DataService))
        _text(g, service, DCTERMS.title, res.get("name") or f"{pkg.get('title') or name} API")
        g.add((service, DCAT.endpointURL, url))
        g.add((service, DCAT.servesDataset, ds))
        return
    g.add((dist, DCAT.downloadURL, url))
    if known is not None:
        g.add((dist, DCTERMS.format, _term(g, known.file_type)))


def dataset_graph(pkg: Mapping[str, Any], base_url: str) -> Graph:
    """One package as DCAT-AP 3 (/dataset/{name}.jsonld|.ttl|.rdf)."""
    graph = _new_graph()
    add_dataset(graph, pkg, base_url)
    return graph


# -- catalog ------------------------------------------------------------------------------------------


def catalog_iri(base_url: str) -> URIRef:
    return _iri(base_url, "catalog")


def page_iri(base_url: str, fmt: str, page: int) -> URIRef:
    """The IRI of one page of /catalog.{fmt}."""
    return URIRef(f"{base_url.rstrip('/')}/catalog.{fmt}?page={page}")


def catalog_graph(catalog: Mapping[str, Any], packages: Iterable[Mapping[str, Any]], base_url: str,
                  page: int, page_size: int, total: int, *, fmt: str = "jsonld") -> Graph:
    """One page of the catalog as DCAT-AP 3, with Hydra paging links when there is more than one.

    `fmt` only shapes the paging links (/catalog.{fmt}?page=N), so a client stays in the
    serialisation it asked for.
    """
    if page < 1:
        raise Invalid("page", "must be at least 1 / 页码从 1 开始")
    if page_size < 1:
        raise Invalid("page_size", "must be at least 1 / 每页条数至少为 1")
    g = _new_graph()
    cat = catalog_iri(base_url)
    g.add((cat, RDF.type, DCAT.Catalog))
    _text(g, cat, DCTERMS.title, catalog.get("title"))
    _text(g, cat, DCTERMS.title, catalog.get("title_en"), EN)
    _text(g, cat, DCTERMS.description, catalog.get("description") or catalog.get("title"))
    _text(g, cat, DCTERMS.description, catalog.get("description_en"), EN)
    publisher = catalog.get("publisher") or {}
    g.add((cat, DCTERMS.publisher, _agent(
        g, URIRef(f"{cat}#publisher"), publisher.get("name"), name_en=publisher.get("name_en"),
        kind=publisher.get("type") or DEFAULT_PUBLISHER_TYPE, identifier=publisher.get("credit_code"),
        homepage=publisher.get("url"))))
    homepage = _typed_iri(g, catalog.get("homepage") or base_url, FOAF.Document)
    if homepage is not None:
        g.add((cat, FOAF.homepage, homepage))
    for code in catalog.get("language") or ():
        if code in LANGUAGES:
            g.add((cat, DCTERMS.language, _term(g, LANGUAGES[code])))
    if (lic := _typed_iri(g, catalog.get("license_url"), DCTERMS.LicenseDocument)) is not None:
        g.add((cat, DCTERMS.license, lic))
        _text(g, lic, RDFS.label, catalog.get("license_title"))
    g.add((cat, DCAT.themeTaxonomy, _term(g, THEME_SCHEME)))
    if (issued := _datetime(catalog.get("issued"))) is not None:
        g.add((cat, DCTERMS.issued, issued))
    latest: dt.datetime | None = None
    for pkg in packages:
        g.add((cat, DCAT.dataset, add_dataset(g, pkg, base_url)))
        modified = _datetime(pkg.get("metadata_modified"))
        if modified is not None and not modified.ill_typed:
            value = modified.toPython()
            latest = value if latest is None or value > latest else latest
    # The catalog changed when its latest dataset did, unless the caller knows better.
    modified_lit = _datetime(catalog.get("modified")) or (_datetime(latest) if latest else None)
    if modified_lit is not None:
        g.add((cat, DCTERMS.modified, modified_lit))
    if total > page_size:
        _add_paging(g, base_url, fmt, page, page_size, total)
    return g


def _add_paging(g: Graph, base_url: str, fmt: str, page: int, page_size: int, total: int) -> None:
    # Hydra paging as SEMIC's DCAT-AP guidelines (and ckanext-dcat) describe it.
    last = max(1, math.ceil(total / page_size))
    here = page_iri(base_url, fmt, page)
    g.add((here, RDF.type, HYDRA.PagedCollection))
    g.add((here, HYDRA.totalItems, Literal(total, datatype=XSD.integer)))
    g.add((here, HYDRA.itemsPerPage, Literal(page_size, datatype=XSD.integer)))
    g.add((here, HYDRA.firstPage, page_iri(base_url, fmt, 1)))
    g.add((here, HYDRA.lastPage, page_iri(base_url, fmt, last)))
    if page < last:
        g.add((here, HYDRA.nextPage, page_iri(base_url, fmt, page + 1)))
    if page > 1:
        g.add((here, HYDRA.previousPage, page_iri(base_url, fmt, min(page - 1, last))))


# -- output and validation ------------------------------------------------------------------------------


def serialize(graph: Graph, fmt: str) -> tuple[bytes, str]:
    """The graph as jsonld|ttl|rdf: (body, media type). JSON-LD is compacted with CONTEXT."""
    if fmt not in SERIALIZATIONS:
        raise Invalid("fmt", f"one of {', '.join(SERIALIZATIONS)} / 不支持的格式")
    rdf_format, media_type = SERIALIZATIONS[fmt]
    if fmt == "jsonld":
        body = graph.serialize(format=rdf_format, context=CONTEXT, auto_compact=True, ensure_ascii=False)
    else:
        body = graph.serialize(format=rdf_format)
    return body.encode("utf-8"), media_type


def validate(graph: Graph) -> tuple[bool, str]:
    """Check a graph against the official DCAT-AP 3 SHACL shapes: (conforms, report text).

    RDFS inference is on because the shapes say `sh:class rdfs:Resource` for URLs
    (dcat:accessURL, dcat:endpointURL...), which any IRI is under RDFS and none is without.
    Raises shapes.ShapesMissing when `python -m cityos.opendata.shapes` has not been run.
    """
    conforms, _report, text = pyshacl.validate(
        graph, shacl_graph=shapes.shapes_graph(), inference="rdfs", allow_warnings=False)
    return bool(conforms), str(text)
