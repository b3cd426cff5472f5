"""The HTTP API answers with the Python API's own numbers, validates like it, and never reads paths or the network."""

from __future__ import annotations

import json
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed: pip install 'vramfit[web]'")
from fastapi.testclient import TestClient

import vramfit
from vramfit.model.catalog import catalog_config
from vramfit.settings import Settings, settings_from_dict
from vramfit.web.app import create_app

MODELS = ["meta-llama/Llama-3.1-8B", "Qwen/Qwen3-30B-A3B", "deepseek-ai/DeepSeek-V3", "google/gemma-2-9b"]


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(max_body_bytes=64 * 1024))


def expected(model: str, settings: Settings) -> dict[str, Any]:
    """What the Python API says, through the same JSON encoding the response uses."""
    from pydantic import TypeAdapter

    from vramfit.result import Estimate

    return json.loads(TypeAdapter(Estimate).dump_json(vramfit.estimate(model, settings)))


@pytest.mark.parametrize("model", MODELS)
def test_estimate_equals_the_python_api(client: TestClient, model: str) -> None:
    settings = {"workload": {"batch_size": 4, "seq_len": 4096}}
    response = client.post("/api/estimate", json={"model": model, "settings": settings})
    assert response.status_code == 200, response.text
    assert response.json() == expected(model, settings_from_dict(settings))


def test_training_settings_travel_intact(client: TestClient) -> None:
    settings = {"workload": {"mode": "training", "batch_size": 2, "seq_len": 1024},
                "training": {"finetune": "lora", "lora": {"rank": 16, "targets": ["q_proj", "v_proj"]}}}
    body = client.post("/api/estimate", json={"model": "meta-llama/Llama-3.2-1B-Instruct",
                                              "settings": settings}).json()
    assert body["settings"]["training"]["lora"]["rank"] == 16
    assert body == expected("meta-llama/Llama-3.2-1B-Instruct", settings_from_dict(settings))


def test_pasted_config_gives_the_same_numbers_as_the_catalog(client: TestClient) -> None:
    pasted = client.post("/api/estimate", json={"config": catalog_config("Qwen/Qwen3-8B")}).json()
    named = client.post("/api/estimate", json={"model": "Qwen/Qwen3-8B"}).json()
    assert pasted["memory"] == named["memory"]
    assert pasted["parameters"] == named["parameters"]


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "meta-llama/Llama-3.1-8B", "settings": {"workload": {"batch_size": 0}}}, 422, "batch_size"),
    ({"model": "meta-llama/Llama-3.1-8B", "settings": {"workload": {"batch_sise": 2}}}, 422, "batch_sise"),
    ({"model": "meta-llama/Llama-3.1-8B", "settings": {"precision": {"dtype": "fp64"}}}, 422, "dtype"),
    ({"model": "meta-llama/Llama-3.1-8B", "config": {}}, 422, "exactly one"),
    ({"settings": {}}, 422, "exactly one"),
    ({"config": {"model_type": "no-such-type"}}, 422, "model_type"),
])
def test_bad_requests_name_the_field(client: TestClient, body: dict[str, Any], status: int, fragment: str) -> None:
    response = client.post("/api/estimate", json=body)
    assert response.status_code == status
    assert fragment in response.text


@pytest.mark.parametrize("name", ["/etc/passwd", "../../etc", "tests", "someone/unknown-model"])
def test_paths_and_hub_ids_are_refused_without_network(client: TestClient, name: str) -> None:
    response = client.post("/api/estimate", json={"model": name})
    assert response.status_code == 404
    assert "catalog" in response.json()["detail"]


def test_paths_are_refused_even_with_network() -> None:
    client = TestClient(create_app(allow_network=True))
    response = client.post("/api/estimate", json={"model": "../etc/passwd"})
    assert response.status_code == 422
    assert "never read" in response.json()["detail"]


def test_large_bodies_are_refused(client: TestClient) -> None:
    huge = {"config": {"model_type": "llama", "padding": "x" * 100_000}}
    assert client.post("/api/estimate", json=huge).status_code == 413


def test_catalog_search(client: TestClient) -> None:
    ids = [entry["id"] for entry in client.get("/api/catalog", params={"q": "llama 8b"}).json()]
    assert "meta-llama/Llama-3.1-8B" in ids
    assert all("8b" in i.lower() for i in ids)


def test_gpu_list_carries_usable_bytes(client: TestClient) -> None:
    from vramfit import gpus

    listed = {g["id"]: g["usable_bytes"] for g in client.get("/api/gpus").json()}
    assert listed == {g.id: g.usable_bytes for g in gpus.CATALOG}


def test_openapi_documents_the_routes_and_the_settings_schema(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/estimate", "/api/catalog", "/api/gpus", "/api/fit", "/api/check", "/api/max-batch",
            "/api/max-context", "/api/plan", "/api/sweep"} <= set(schema["paths"])
    assert {"Settings", "Workload", "Estimate", "Component"} <= set(schema["components"]["schemas"])
    assert client.get("/docs").status_code == 200


def test_page_and_assets_are_served_locally(client: TestClient) -> None:
    page = client.get("/").text
    assert "/static/vramfit.js" in page
    assert "http://" not in page.replace("http://www.w3.org", "")
    assert "https://" not in page
    for asset in ("/static/vramfit.js", "/static/vramfit.css"):
        assert client.get(asset).status_code == 200


def _model(name: str) -> Any:
    from vramfit.model.sources import load_model

    return load_model(name)


def test_check_equals_the_python_api(client: TestClient) -> None:
    from vramfit import search

    body = client.post("/api/check", json={"model": "meta-llama/Llama-3.1-8B",
                                           "settings": {"gpu": "rtx-4090"}}).json()
    check = search.check(_model("meta-llama/Llama-3.1-8B"), Settings(gpu="rtx-4090"))
    assert (body["fits"], body["total_bytes"], body["capacity_bytes"], body["headroom_bytes"]) == (
        check.fits, check.total_bytes, check.capacity_bytes, check.headroom_bytes)


@pytest.mark.parametrize(("route", "function"), [("max-batch", "max_batch"), ("max-context", "max_context")])
def test_largest_equals_the_python_api(client: TestClient, route: str, function: str) -> None:
    from vramfit import search

    settings = {"gpu": "rtx-4090", "workload": {"batch_size": 2, "seq_len": 4096}}
    body = client.post(f"/api/{route}", json={"model": "Qwen/Qwen3-8B", "settings": settings}).json()
    found = getattr(search, function)(_model("Qwen/Qwen3-8B"), settings_from_dict(settings))
    assert (body["value"], body["limited_by"]) == (found.value, found.limited_by)
    assert body["at_value"]["total_bytes"] == found.at_value.total_bytes


def test_fit_and_plan_equal_the_python_api(client: TestClient) -> None:
    from vramfit import gpus, search

    model = _model("meta-llama/Llama-3.1-70B")
    fits = client.post("/api/fit", json={"model": "meta-llama/Llama-3.1-70B", "gpus": ["rtx-4090", "h100-80gb"],
                                         "max_gpus": 8}).json()
    expected_fit = search.fit(model, Settings(), gpus=[gpus.lookup("rtx-4090"), gpus.lookup("h100-80gb")],
                              max_gpus=8)
    assert [(f["gpu"]["id"], f["count"]) for f in fits] == [(f.gpu.id, f.count) for f in expected_fit]
    planned = client.post("/api/plan", json={"model": "meta-llama/Llama-3.1-70B", "gpus": 4,
                                             "gpu": "h100-80gb"}).json()
    expected_plan = search.plan(model, Settings(), 4, gpu="h100-80gb")
    assert [r["description"] for r in planned["layouts"]] == [r.layout.describe() for r in expected_plan.layouts]
    assert planned["layouts"], "70B in bf16 on 4 H100s has layouts that fit"


def test_searches_need_a_gpu(client: TestClient) -> None:
    response = client.post("/api/max-batch", json={"model": "Qwen/Qwen3-8B"})
    assert response.status_code == 422
    assert "--gpu" in response.json()["detail"]


def test_sweep_equals_the_python_api_point_by_point(client: TestClient) -> None:
    settings = {"workload": {"mode": "training"}, "training": {"finetune": "lora"}}
    axes = {"batch_size": [1, 4], "seq_len": [1024, 4096]}
    response = client.post("/api/sweep", json={"model": "Qwen/Qwen3-0.6B", "settings": settings, "axes": axes})
    assert response.status_code == 200, response.text
    base = settings_from_dict(settings)
    assert response.json() == [expected("Qwen/Qwen3-0.6B", base.replace(batch_size=b, seq_len=t))
                                for b in (1, 4) for t in (1024, 4096)]


@pytest.mark.parametrize(("axes", "fragment"), [
    ({"batch_size": [1, 0]}, "batch_size"),                # a later point out of range: vramfit's own message
    ({"batch_size": [1, True]}, '"axes","batch_size"'),    # strict: a JSON true is not the integer 1
    ({"batch_size": [1, 2.5]}, '"axes","batch_size"'),
    ({"batchsize": [1]}, "batchsize: not a setting"),
    ({}, "axes"),
    ({"batch_size": list(range(1, 34)), "seq_len": list(range(1, 33))}, "more than 1024"),
])
def test_a_bad_sweep_names_the_axis(client: TestClient, axes: dict[str, Any], fragment: str) -> None:
    response = client.post("/api/sweep", json={"model": "Qwen/Qwen3-0.6B", "axes": axes})
    assert response.status_code == 422
    assert fragment in response.text
