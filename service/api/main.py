"""Build the FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from prunesearch import __version__
from prunesearch.search.backend import OptunaBackend, SearchBackend
from prunesearch.service.api import errors, metrics
from prunesearch.service.api.bodylimit import BodyLimit
from prunesearch.service.api.routes import datasets, evaluations, events, exports, jobs, system, web
from prunesearch.service.settings import Settings, get_settings


def create_app(settings: Settings | None = None, backend: SearchBackend | None = None) -> FastAPI:
    """The API; it reads and writes the database only (workers do all model work). `backend`: how it reads and
    deletes searches (default: the Optuna studies in the service's database; tests pass a fake)."""
    app = FastAPI(title="prunesearch", version=__version__, description="Hardware-aware pruning search jobs.")
    app.state.settings = settings or get_settings()
    app.state.backend = backend or OptunaBackend(app.state.settings.db_url)
    for module in (jobs, events, exports, evaluations, datasets, system):
        app.include_router(module.router)
    web.install(app)  # the page at `/`
    errors.install(app)
    metrics.install(app, app.state.settings.db_url)
    limits = app.state.settings
    app.add_middleware(BodyLimit, max_body_bytes=limits.max_body_bytes, max_upload_bytes=limits.max_upload_bytes)
    return app


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory prunesearch.service.api.main:app_from_env`."""
    return create_app(get_settings())
