"""Text that looks like a number (数字文本), property-tested where a parameter is read as a whole
number: "²" passes str.isdigit() but int() refuses it, and int() refuses more than 4,300 digits, so
each reader must turn any text into its number or its own clear error, never a ValueError (a 500).
Found by the `$filter` property (test_sta_filter_property); the same pattern was in page numbers,
entity keys and time parameters."""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cityos.core.errors import Invalid, NotFound
from cityos.core.pages_base import page_number
from cityos.sensing import sensorthings
from cityos.sensing.api import time_param

# Digits of other scripts (Arabic-Indic, full-width, Devanagari), superscripts and fractions that
# isdigit() or isnumeric() accept, signs, spaces and plain ASCII digits.
NUMBERISH = "0123456789١٢٣１２３४५²³¹½⅔Ⅻ-+ .e\u00a0"
digit_text = st.one_of(st.text(st.sampled_from(NUMBERISH), max_size=12), st.text(max_size=8),
                       st.integers(1, 6000).map(lambda n: "9" * n))  # beyond int()'s 4,300 digits


def examples(n: int) -> settings:
    """Reproducible in CI (derandomized), no example database in the repo."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@examples(200)
@given(digit_text)
def test_a_page_number_is_any_text_read_or_the_first_page(text: str) -> None:
    n = page_number(text)
    assert 1 <= n < 1_000_000
    if text.isascii() and text.isdigit() and len(text) < 7 and int(text) > 0:
        assert n == int(text)


@examples(200)
@given(digit_text)
def test_an_entity_key_is_a_number_or_not_found(text: str) -> None:
    try:
        key = sensorthings._key(sensorthings.SETS["Things"], text)
    except NotFound:
        return
    assert key is not None and 0 <= key < 10**18


@examples(200)
@given(digit_text)
def test_a_series_time_is_epoch_ms_or_invalid_naming_it(text: str) -> None:
    try:
        ms = time_param(text, "start")
    except Invalid as exc:
        assert exc.errors[0].field == "start"
        return
    assert ms is None or ms >= 0


@examples(25)
@given(digit_text)
def test_the_portal_pages_any_page_text(client: TestClient, text: str) -> None:
    r = client.get("/data", params={"page": text[:5000]})
    assert r.status_code == 200, (text[:40], r.status_code)
