"""The tests that catch the demo's regression (the original design's test_fail.py)."""

from fastapi.testclient import TestClient

from app.main import app

client = TestClient(app)


def test_in_stock_filter_hides_sold_out_items() -> None:
    names = [item["name"] for item in client.get("/items", params={"in_stock": True}).json()]
    assert names == ["hammer", "wrench"], f"sold-out items must be hidden, got {names}"


def test_cart_total_multiplies_price_by_quantity() -> None:
    total = client.get("/cart/total", params={"item_id": 3, "quantity": 4}).json()["total"]
    assert total == 39.0
