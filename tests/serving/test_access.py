"""bentoservice.access: optional API keys and a per-client rate limit on the prediction
endpoints, through real HTTP requests to an ASGI app wrapped by the middleware (Starlette's
test client); the service's wiring of it from its settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bentoservice.access import ApiAccess, TokenBuckets, access_options, read_keys
from catsdogs.settings import ServingSettings
from tests.serving.conftest import serve_tiny
from tests.serving.images import encode, picture


async def _ok(request) -> JSONResponse:
    return JSONResponse({"label": "cat"})


def client(address: str = "testclient", **options) -> TestClient:
    app = Starlette(routes=[Route("/predict", _ok, methods=["POST"]),
                            Route("/feedback", _ok, methods=["POST"]),
                            Route("/review/queue", _ok), Route("/review/picture", _ok),
                            Route("/readyz", _ok), Route("/metrics", _ok)])
    app.add_middleware(ApiAccess, **options)
    return TestClient(app, client=(address, 50000))


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.write_text("# clients\nkey-alpha-0123456789\n\n  key-beta-9876543210  \n")
    return path


def test_off_by_default_everything_passes() -> None:
    web = client(**access_options(ServingSettings()))
    for _ in range(50):
        assert web.post("/predict").status_code == 200


def test_keys_are_required_on_prediction_paths_only(keys_file: Path) -> None:
    web = client(keys=read_keys(keys_file))
    refused = web.post("/predict")
    assert refused.status_code == 401
    assert refused.json()["error"] == "unauthorized"
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert web.post("/predict", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert web.post("/predict", headers={"Authorization": "Bearer key-alpha-0123456789"}
                    ).status_code == 200
    assert web.post("/predict", headers={"X-API-Key": "key-beta-9876543210"}).status_code == 200
    assert web.post("/feedback").status_code == 401   # labels need a key too
    assert web.post("/feedback", headers={"X-API-Key": "key-beta-9876543210"}
                    ).status_code == 200
    assert web.get("/readyz").status_code == 200 and web.get("/metrics").status_code == 200


def test_without_keys_the_review_data_answer_only_on_this_host(keys_file: Path) -> None:
    """Users' pictures never go to the network without a key: a loopback caller (directly, or
    through a proxy on this host that sets X-Real-IP to it) gets them; a caller from another host,
    directly or through the proxy, gets 403 review_needs_keys, while its predictions still pass.
    With keys, the key decides wherever the caller is."""
    local, remote = client("127.0.0.1"), client("203.0.113.7")
    for path in ("/review/queue", "/review/picture"):
        assert local.get(path).status_code == 200
        assert local.get(path, headers={"X-Real-IP": "::1"}).status_code == 200
        through_proxy = local.get(path, headers={"X-Real-IP": "172.18.0.1"})
        assert through_proxy.status_code == 403
        assert through_proxy.json()["error"] == "review_needs_keys"
        assert remote.get(path).status_code == 403
        assert remote.get(path, headers={"X-Real-IP": "127.0.0.1"}).status_code == 403
    assert remote.post("/predict").status_code == 200
    keyed = client("203.0.113.7", keys=read_keys(keys_file))
    assert keyed.get("/review/queue").status_code == 401
    assert keyed.get("/review/queue", headers={"X-API-Key": "key-alpha-0123456789"}
                     ).status_code == 200


def test_429_with_retry_after_past_the_limit_per_client(keys_file: Path) -> None:
    web = client(keys=read_keys(keys_file), per_minute=3)
    alpha = {"X-API-Key": "key-alpha-0123456789"}
    assert [web.post("/predict", headers=alpha).status_code for _ in range(3)] == [200] * 3
    limited = web.post("/predict", headers=alpha)
    assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 20   # 3 a minute: a token every 20 s
    # another client has its own allowance; health stays open
    assert web.post("/predict", headers={"X-API-Key": "key-beta-9876543210"}).status_code == 200
    assert web.post("/feedback").status_code == 401   # labels need a key too
    assert web.post("/feedback", headers={"X-API-Key": "key-beta-9876543210"}
                    ).status_code == 200
    assert web.get("/readyz").status_code == 200


def test_without_keys_clients_are_told_apart_by_the_trusted_header() -> None:
    web = client(per_minute=1, client_header="x-real-ip")
    assert web.post("/predict", headers={"X-Real-IP": "10.0.0.1"}).status_code == 200
    assert web.post("/predict", headers={"X-Real-IP": "10.0.0.1"}).status_code == 429
    assert web.post("/predict", headers={"X-Real-IP": "10.0.0.2"}).status_code == 200


def test_bucket_refills_at_the_rate_and_caps_at_the_burst() -> None:
    now = [0.0]
    buckets = TokenBuckets(per_minute=60, burst=2, clock=lambda: now[0], max_clients=2)
    assert buckets.take("a") == 0 and buckets.take("a") == 0
    assert buckets.take("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert buckets.take("a") == 0
    now[0] += 100.0
    assert [buckets.take("a") for _ in range(3)][2] > 0   # only 2 saved up
    buckets.take("b"), buckets.take("c")
    assert list(buckets._buckets) == ["b", "c"]           # least recently seen dropped


def test_a_set_but_empty_keys_file_stops_the_service(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# none yet\n")
    with pytest.raises(SystemExit, match="CATSDOGS_API_KEYS_FILE: .* lists no API key"):
        access_options(ServingSettings(api_keys_file=empty))
    with pytest.raises(SystemExit, match="CATSDOGS_API_KEYS_FILE"):
        access_options(ServingSettings(api_keys_file=tmp_path / "missing"))


@pytest.mark.services
def test_the_real_service_requires_a_key_and_limits_each_client(
        mlflow_server: str, tmp_path: Path, keys_file: Path) -> None:
    """`bentoml serve` with both on: 401 without a key, answers with one, 429 and Retry-After
    past the limit; readiness stays open."""
    import requests

    settings = {"CATSDOGS_API_KEYS_FILE": str(keys_file), "CATSDOGS_RATE_LIMIT_PER_MINUTE": "2"}
    photo = encode(picture(3), "PNG")
    with serve_tiny(mlflow_server, tmp_path, model_name="CatsDogsAccess",
                    extra_env=settings) as server:
        def predict(headers: dict[str, str]) -> requests.Response:
            return requests.post(f"{server.url}/predict", files={"image": ("a.png", photo)},
                                 headers=headers, timeout=60)

        assert predict({}).status_code == 401
        key = {"Authorization": "Bearer key-alpha-0123456789"}
        answers = [predict(key) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429], answers[-1].text
        assert answers[0].json()["label"] in ("cat", "dog")
        assert 1 <= int(answers[2].headers["Retry-After"]) <= 30, answers[2].headers
        assert answers[2].json()["error"] == "rate_limited"
        assert requests.get(f"{server.url}/readyz", timeout=10).status_code == 200
