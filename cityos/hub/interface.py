"""The city standard data interface (城市标准数据接口): one JSON Schema (draft 2020-12) per
resource, generated from its information items, describing the body of a push
(`POST /api/hub/resources/{code}/rows`). This module is the one place that maps items to it.
"""

from __future__ import annotations

from typing import Any

from cityos.hub.models import Item, Resource

DIALECT = "https://json-schema.org/draft/2020-12/schema"
# Shapes only: the load itself also checks the GB 11643 / GB 32100 check characters.
CITIZEN_ID = r"^[0-9]{17}[0-9Xx]$"
CREDIT_CODE = r"^[0-9A-HJ-NPQRTUWXYa-hj-npqrtuwxy]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXYa-hj-npqrtuwxy]{10}$"
PHONE = r"^(\+?86)?(1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8}(-[0-9]{1,6})?)$"

_BASE: dict[str, dict[str, Any]] = {
    "string": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
    "citizen_id": {"type": "string", "pattern": CITIZEN_ID, "x-check": "GB 11643-1999"},
    "credit_code": {"type": "string", "pattern": CREDIT_CODE, "x-check": "GB 32100-2015"},
    "phone": {"type": "string", "pattern": PHONE},
}


def item_schema(item: Item) -> dict[str, Any]:
    """One item's value: its type, bounds, length, pattern and choices; null unless required."""
    s: dict[str, Any] = {"title": item.title, **_BASE[item.type]}
    if item.description:
        s["description"] = item.description
    if item.unit:
        s["x-unit"] = item.unit
    if item.type in ("integer", "number"):
        if item.minimum is not None:
            s["minimum"] = item.minimum
        if item.maximum is not None:
            s["maximum"] = item.maximum
    if item.type == "string":
        if item.max_length is not None:
            s["maxLength"] = item.max_length
        if item.pattern:
            # Items are matched whole (fullmatch); JSON Schema patterns are not anchored.
            s["pattern"] = f"^(?:{item.pattern})$"
        if item.choices:
            s["enum"] = list(item.choices)
    if item.sensitivity == "sensitive":
        s["x-sensitive"] = True  # stored encrypted
    if not (item.required or item.is_key):
        s["type"] = [s["type"], "null"]
        if "enum" in s:
            s["enum"] = [*s["enum"], None]
    return s


def push_schema(res: Resource) -> dict[str, Any]:
    """The JSON Schema of a push body for this resource (rows, mode, delete, keep_valid)."""
    props = {i.name: item_schema(i) for i in res.items}
    keys = list(res.key_fields)
    whole = [i.name for i in res.items if i.required or i.is_key]
    row = {"type": "object", "properties": props, "additionalProperties": False,
           "required": keys, "minProperties": 1}
    key = {"type": "object", "properties": {k: props[k] for k in keys}, "required": keys,
           "additionalProperties": False}
    return {
        "$schema": DIALECT,
        "$id": f"/api/hub/resources/{res.code}/schema",
        "title": f"{res.name} — city standard data interface / 城市标准数据接口",
        "description": ("Push body: rows are upserted by the key items (partial rows keep the items "
                        "they leave out) or, with mode replace, become the whole resource. Send an "
                        "Idempotency-Key header to make a retry safe."),
        "type": "object",
        "properties": {
            "rows": {"type": "array", "items": {"$ref": "#/$defs/row"}},
            "mode": {"enum": ["upsert", "replace"], "default": "upsert"},
            "delete": {"type": "array", "items": {"$ref": "#/$defs/key"}},
            "keep_valid": {"type": "boolean", "default": False},
            "request_key": {"type": "string", "minLength": 1, "maxLength": 128},
        },
        "required": ["rows"],
        "additionalProperties": False,
        # Replacing the resource sends whole rows: every required item is there.
        "if": {"properties": {"mode": {"const": "replace"}}, "required": ["mode"]},
        "then": {"properties": {"rows": {"items": {"required": whole}}}},
        "$defs": {"row": row, "key": key},
        "x-resource": res.code,
        "x-key-fields": keys,
    }
