"""/readyz says which dependency is down."""

from web import create_app


def test_ready_when_redis_database_and_broker_answer(client):
    response = client.get("/readyz")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["success"] is True
    assert {name for name, r in body["data"].items() if r["ok"]} == {"redis", "database", "broker"}


def test_not_ready_names_the_broken_dependency(settings):
    from cache.server import free_port

    broken = settings.with_(celery_broker_url=f"redis://127.0.0.1:{free_port()}/0")
    app = create_app(broken)
    response = app.test_client().get("/readyz")
    body = response.get_json()
    assert response.status_code == 503
    assert body["success"] is False
    assert body["data"]["broker"]["ok"] is False
    assert body["data"]["redis"]["ok"] is True
    assert "broker" in body["errorMsg"]
    app.extensions["hmdp"].close()
