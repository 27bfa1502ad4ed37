from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)


def test_health() -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_list_items() -> None:
    assert [item["name"] for item in client.get("/items").json()] == [
        "hammer",
        "screwdriver",
        "wrench",
    ]


def test_unknown_item_is_404() -> None:
    assert client.get("/items/99").status_code == 404
