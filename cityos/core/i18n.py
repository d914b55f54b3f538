"""Language (语言): zh-CN first, English beside it. Catalogs are flat JSON files per language."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGUAGES = ("zh-CN", "en")
LOCALES = Path(__file__).resolve().parent / "locales"


@cache
def catalog(lang: str) -> dict[str, str]:
    path = LOCALES / f"{lang}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def t(key: str, lang: str = "zh-CN", **params: object) -> str:
    """Translate `key`; fall back to zh-CN, then to the key itself, so a gap shows, not crashes."""
    text = catalog(lang).get(key) or catalog("zh-CN").get(key) or key
    return text.format(**params) if params else text


def pick(query: str | None, cookie: str | None, accept: str | None, default: str) -> str:
    """Choose the language: ?lang=, then the cookie, then the configured default (zh-CN).

    Accept-Language is deliberately not consulted first: the city's staff use Chinese even on
    English-language browsers; English is a switch they choose.
    """
    for candidate in (query, cookie):
        if candidate in LANGUAGES:
            return candidate
    return default
