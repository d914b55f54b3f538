"""Open311 GeoReport v2 on the wire: answers as the spec writes them — JSON arrays and objects,
or XML whose element names are the JSON members (`<services><service>...`,
`<service_requests><request>...`, `<errors><error>...`), each list member repeated under its
singular name — and the fields a client POSTs (form-encoded as the spec says, or JSON).

Kept apart from the routes so that the shape of every answer — and of every error — is decided in
one place, whatever went wrong and wherever.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response

from cityos.core.errors import Invalid

FORMATS = {"json": "application/json; charset=utf-8", "xml": "text/xml; charset=utf-8"}
DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
# A list member's items are elements named in the singular (<attributes><attribute>...).
SINGULAR = {"attributes": "attribute", "values": "value", "endpoints": "endpoint", "formats": "format",
            "services": "service", "service_requests": "request", "errors": "error"}


def format_of_path(path: str) -> str:
    """The answer's format from the resource's suffix (`.xml` or `.json`); JSON when it has none."""
    return "xml" if path.rsplit("/", 1)[-1].lower().endswith(".xml") else "json"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return str(value)


def _add(parent: ET.Element, name: str, value: Any) -> None:
    """Append `value` under `parent` as element `name`: objects nest, lists repeat in the singular."""
    node = ET.SubElement(parent, name)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _add(node, str(key), item)
    elif isinstance(value, list | tuple):
        item_name = SINGULAR.get(name, "item")
        for item in value:
            _add(node, item_name, item)
    else:
        node.text = _text(value)


def to_xml(root: str, body: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> bytes:
    """The XML document of `body`: a list becomes `<root>` holding one element per item (named by
    `SINGULAR`), an object becomes `<root>` holding its members."""
    top = ET.Element(root)
    if isinstance(body, Mapping):
        for key, value in body.items():
            _add(top, str(key), value)
    else:
        item_name = SINGULAR[root]
        for item in body:
            _add(top, item_name, item)
    return DECLARATION + ET.tostring(top, encoding="unicode").encode("utf-8")


def render(fmt: str, root: str, body: Mapping[str, Any] | Sequence[Mapping[str, Any]],
           status: int = 200) -> Response:
    """An answer in `fmt` (json or xml); `root` names the XML document element."""
    if fmt == "xml":
        return Response(to_xml(root, body), status_code=status, media_type=FORMATS["xml"])
    return Response(orjson.dumps(body), status_code=status, media_type=FORMATS["json"])


def errors(fmt: str, status: int, items: Sequence[tuple[int, str]]) -> Response:
    """The spec's error format: `[{"code", "description"}]` or `<errors><error>...`."""
    return render(fmt, "errors", [{"code": code, "description": text} for code, text in items], status)


# -- what a client submits -------------------------------------------------------------------------


class Fields(dict[str, list[str]]):
    """A submitted form: every name with all its values, as the spec's `attribute[code][]` needs."""

    def one(self, name: str) -> str:
        values = self.get(name) or [""]
        return values[0].strip()


def _json_fields(body: Any) -> Fields:
    if not isinstance(body, dict):
        raise Invalid("body", "a JSON object is expected / 须为 JSON 对象")
    out = Fields()
    for key, value in body.items():
        if key == "attribute" and isinstance(value, dict):
            for code, item in value.items():
                items = item if isinstance(item, list) else [item]
                out[f"attribute[{code}]" + ("[]" if isinstance(item, list) else "")] = [str(v) for v in items]
        elif isinstance(value, list):
            out[str(key)] = [str(v) for v in value]
        elif value is not None:
            out[str(key)] = [str(value).lower() if isinstance(value, bool) else str(value)]
    return out


async def submitted(request: Request) -> Fields:
    """The POSTed fields: form-encoded (or multipart) as the spec says, or a JSON object."""
    if "json" in request.headers.get("content-type", ""):
        try:
            return _json_fields(orjson.loads(await request.body()))
        except orjson.JSONDecodeError:
            raise Invalid("body", "not valid JSON / JSON 格式错误") from None
    out = Fields()
    form = await request.form()
    for key, value in form.multi_items():
        if isinstance(value, str):  # a file part (some clients send `media`) is not kept
            out.setdefault(key, []).append(value)
    return out


FieldsDep = Annotated[Fields, Depends(submitted)]
