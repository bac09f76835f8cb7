"""Bad requests over real HTTP: a 4xx naming the field, never a 500, and good requests keep working."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.ray

CASES = [
    ("/search", {"k": 5}, 422, "query"),
    ("/search", {"query": ""}, 422, "query"),
    ("/search", {"query": "a" * 100_000}, 422, "query"),
    ("/search", {"query": "dress", "k": 0}, 422, "k"),
    ("/search", {"query": "dress", "k": -1}, 422, "k"),
    ("/search", {"query": "dress", "k": 10**9}, 422, "k"),
    ("/search", {"query": "dress", "k": "ten"}, 422, "k"),
    ("/search", {"query": ["dress"]}, 422, "query"),
    ("/search", {"query": "dress", "category": "no such category"}, 422, "category"),
    ("/search", {"query": "dress", "category": 5}, 422, "category"),
    ("/similar", {"product_id": "no-such-product", "k": 3}, 404, "product_id"),
    ("/similar", {"product_id": 12, "k": 3}, 422, "product_id"),
    ("/similar", {"k": 3}, 422, "product_id"),
]


@pytest.mark.parametrize("path, body, status, field", CASES)
def test_bad_json_fields(service, path, body, status, field):
    _, url = service
    r = requests.post(f"{url}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert r.json()["detail"][0]["field"] == field


def test_not_json_huge_body_and_the_service_keeps_answering(service):
    _, url = service
    r = requests.post(f"{url}/search", data=b"query=dress", timeout=60)
    assert r.status_code == 400 and r.json()["detail"][0]["field"] == "body"
    r = requests.post(f"{url}/search", data=b"[]", timeout=60)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body"
    big = b'{"query": "' + b"a" * (50 * 2**20) + b'"}'
    r = requests.post(f"{url}/search", data=big, headers={"content-type": "application/json"}, timeout=120)
    assert r.status_code == 413 and r.json()["detail"][0]["field"] == "body"
    good = requests.post(f"{url}/search", json={"query": "dress", "k": 3}, timeout=60)
    assert good.status_code == 200 and len(good.json()["results"]) == 3
