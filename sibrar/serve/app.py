"""The FastAPI application of `sibrar serve`: routes, error bodies, a request-size limit, the page at /."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sibrar.errors import ConflictError, NotFoundError, SibrarError
from sibrar.serve import schemas as S
from sibrar.serve.service import Hit, Service

MAX_BODY_BYTES = 64 * 1024  # an item's or a new user's description fits in a few hundred bytes
log = logging.getLogger("sibrar.serve")
_ERRORS = {404: {"model": S.Problem, "description": "unknown id"},
           422: {"model": S.Problem, "description": "bad request: the message names the field"}}


def create_app(service: Service, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """An app answering for ``service``; all state lives in the service (one per process)."""
    app = FastAPI(title="sibrar serve", version="1", description=f"Recommendations from run {service.run_dir.name}",
                  responses=_ERRORS)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    _add_error_handlers(app)
    page = resources.files("sibrar.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    k_query = Query(10, ge=1, le=S.MAX_K, description="list length")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/health", response_model=S.Health)
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/features", response_model=S.Features)
    def features() -> dict[str, Any]:
        return service.features()

    @app.get("/users", response_model=S.UserList)
    def users(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        return {"n_users": len(service.rec.user_ids), "user_ids": service.user_ids(offset, limit)}

    @app.get("/users/{user_id}", response_model=S.UserInfo)
    def user(user_id: str) -> dict[str, Any]:
        return {"user_id": user_id, "history": [{"item_id": i, "title": t} for i, t in service.history(user_id)]}

    @app.get("/users/{user_id}/recommendations", response_model=S.Recommendations)
    def recommend(user_id: str, k: int = k_query) -> dict[str, Any]:
        return {"user_id": user_id, "k": k, "items": _items(service.recommend(user_id, k))}

    @app.post("/recommendations", response_model=S.Recommendations)
    def recommend_new(body: S.NewUser) -> dict[str, Any]:
        return {"user_id": None, "k": body.k, "items": _items(service.recommend_new_user(body.item_ids, body.features, body.k))}

    @app.get("/items", response_model=S.ItemList)
    def items(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        n_items, page = service.items(offset, limit)
        return {"n_items": n_items, "items": [{"item_id": i, "title": t} for i, t in page]}

    @app.get("/items/{item_id}", response_model=S.Item)
    def item(item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "title": service.item(item_id)[1]}

    @app.get("/items/{item_id}/similar", response_model=S.Similar)
    def similar(item_id: str, k: int = k_query) -> dict[str, Any]:
        hits = service.similar(item_id, k)
        return {"item_id": item_id, "title": service.item(item_id)[1], "k": k, "items": _items(hits)}

    @app.post("/items", response_model=S.AddedItem, status_code=201, responses={409: {"model": S.Problem}})
    def add_item(body: S.NewItem, k: int = k_query) -> dict[str, Any]:
        return service.add_item(body.item_id, body.title, body.features, k)

    @app.delete("/items/{item_id}", response_model=S.Removed)
    def remove_item(item_id: str) -> dict[str, Any]:
        return {"item_id": item_id, "n_items": service.remove_item(item_id)}

    return app


def _items(hits: list[Hit]) -> list[dict[str, Any]]:
    return [{"item_id": h.item_id, "title": h.title, "rank": h.rank, "score": h.score} for h in hits]


def _add_error_handlers(app: FastAPI) -> None:
    """One-line ``{"detail": ...}`` bodies everywhere; never a stack trace in a response."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc.errors())}, status_code=422)

    @app.exception_handler(SibrarError)
    async def sibrar_error(request: Request, exc: SibrarError) -> JSONResponse:
        status = 404 if isinstance(exc, NotFoundError) else 409 if isinstance(exc, ConflictError) else 422
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)  # the trace stays in the log
        return JSONResponse({"detail": "internal server error (see the server log)"}, status_code=500)


def validation_message(errors: Any) -> str:
    """Pydantic errors → "body.features.year: Input should be a valid number (got 'abc'); ..." (first 3)."""
    parts = []
    for err in list(errors)[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if not str(p).startswith("function-after"))
        got = err.get("input")
        shown = "" if err.get("type") == "missing" or isinstance(got, (dict, list)) else f" (got {str(got)[:80]!r})"
        parts.append(f"{where}: {err.get('msg', 'invalid')}{shown}")
    return "; ".join(parts) or "invalid request"


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", ())).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True  # answer now; whatever the app makes of the aborted body is dropped
                await self._refuse(send)
            if refused:
                raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited, guarded_send)
        except _TooLarge:
            pass

    async def _refuse(self, send: Send) -> None:
        body = f'{{"detail":"request body larger than {self.max_bytes} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
