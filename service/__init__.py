"""The REST service: search jobs over HTTP, workers that run them, Pareto results and checkpoint downloads.

Layout: `settings` (one pydantic-settings class), `db` + `models` + `crud` (the only code that talks to
SQLAlchemy), `schemas` (API input and output), `api/` (FastAPI app, thin routes), `worker/` (claims and runs
jobs and exports), `client` + `cli` (the `prunesearch` sub-commands).
"""
