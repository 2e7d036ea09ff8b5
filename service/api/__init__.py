"""The HTTP API (FastAPI): `main.create_app` builds it; routes are thin and call `crud`."""
