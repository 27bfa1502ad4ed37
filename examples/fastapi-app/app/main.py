"""A small inventory service: the project committee's demo tests, commit by commit."""

from fastapi import FastAPI, HTTPException

app = FastAPI(title="inventory")

ITEMS: dict[int, dict[str, object]] = {
    1: {"id": 1, "name": "hammer", "price": 12.5, "stock": 3},
    2: {"id": 2, "name": "screwdriver", "price": 4.0, "stock": 0},
    3: {"id": 3, "name": "wrench", "price": 9.75, "stock": 7},
}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items")
def list_items(in_stock: bool = False) -> list[dict[str, object]]:
    items = list(ITEMS.values())
    if in_stock:
        items = [item for item in items if int(item["stock"]) > 0]  # type: ignore[call-overload]
    return items


@app.get("/items/{item_id}")
def get_item(item_id: int) -> dict[str, object]:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="item not found")
    return ITEMS[item_id]


@app.get("/cart/total")
def cart_total(item_id: int, quantity: int = 1) -> dict[str, float]:
    item = get_item(item_id)
    return {"total": round(float(item["price"]) * quantity, 2)}  # type: ignore[arg-type]
