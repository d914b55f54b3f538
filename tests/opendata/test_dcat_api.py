"""DCAT-AP 3 over HTTP: the served catalog and datasets parse and conform to the official
SHACL shapes; unpublished datasets and unknown formats are not found."""

from __future__ import annotations

import pytest
from rdflib import Graph

from cityos.opendata import dcat

FORMATS = {"jsonld": "json-ld", "ttl": "turtle", "rdf": "xml"}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_catalog_conforms_to_dcat_ap_3(client, open_city, fmt):
    r = client.get(f"/catalog.{fmt}")
    assert r.status_code == 200, r.text
    g = Graph().parse(data=r.content, format=FORMATS[fmt])
    ok, report = dcat.validate(g)
    assert ok, report
    assert "air-quality-daily" in r.text and "环境空气质量日报" in r.text


def test_dataset_conforms_and_names_its_downloads(client, open_city):
    r = client.get("/dataset/air-quality-daily.ttl")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/turtle")
    g = Graph().parse(data=r.content, format="turtle")
    ok, report = dcat.validate(g)
    assert ok, report
    assert "/data/dataset/air-quality-daily/download.geojson" in r.text


def test_unknown_and_unpublished_are_not_found(client, open_city):
    assert client.get("/dataset/no-such.jsonld").status_code == 404
    assert client.get("/dataset/air-quality-daily.exe").status_code == 404
    assert client.get("/catalog.exe").status_code == 404
    assert client.get("/catalog.jsonld?page=0").status_code == 422
