"""Request parsing and limits (the ingress's validation, without a server)."""

from __future__ import annotations

import pytest

from ace_ray.serve import api


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"not json", 400, "body"),
        (b"[1, 2]", 422, "body"),
        (b"{}", 422, "query"),
        (b'{"query": 3}', 422, "query"),
        (b'{"query": "a", "k": "ten"}', 422, "k"),
        (b'{"query": "a", "k": 2.5}', 422, "k"),
        (b'{"query": "a", "k": true}', 422, "k"),
        (b'{"query": "a", "category": 7}', 422, "category"),
        (b'{"query": "a", "kk": 7}', 422, "kk"),
        (b"\xff\xfe", 400, "body"),
    ],
)
def test_parse_names_the_field(body, status, field):
    with pytest.raises(api.BadRequest) as err:
        api.parse(body, api.SearchRequest)
    assert (err.value.status, err.value.field) == (status, field)


@pytest.mark.parametrize("k", [0, -1, 10**9])
def test_k_out_of_range(k):
    with pytest.raises(api.BadRequest, match="between 1 and 1000"):
        api.check_k(k, 1000)


def test_query_limits():
    assert api.check_query("  red dress ", 100) == "red dress"
    for q in ("", "   \t"):
        with pytest.raises(api.BadRequest, match="empty"):
            api.check_query(q, 100)
    with pytest.raises(api.BadRequest, match="100,000 characters"):
        api.check_query("a" * 100_000, 1000)
