"""Service settings: one pydantic-settings class, read from `PRUNESEARCH_*` environment variables."""

from __future__ import annotations

import os
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# The bundled examples (the repository's examples/, installed as package data of `prunesearch.examples`): hold the
# demo model `tiny-llama` (examples/train_tiny_llama.py).
EXAMPLES_DIR = Path(str(files("prunesearch.examples")))
BUNDLED_EXAMPLES = EXAMPLES_DIR / "tiny-llama"


def default_data_dir() -> Path:
    """`$PRUNESEARCH_HOME/data` when set, else `~/.local/share/prunesearch`."""
    home = os.environ.get("PRUNESEARCH_HOME")
    return Path(home) / "data" if home else Path.home() / ".local" / "share" / "prunesearch"


class Settings(BaseSettings):
    """Everything the API and workers need to agree on; `PRUNESEARCH_DATABASE_URL` and so on."""

    model_config = SettingsConfigDict(env_prefix="PRUNESEARCH_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    model_roots: list[Path] | None = Field(None, description="directories models may be read from")
    calibration_roots: list[Path] | None = Field(None, description="directories calibration may be read from")
    exports_dir: Path | None = None
    allow_hub: bool = Field(False, description="accept hub ids for models (needs network on the workers)")
    max_upload_bytes: int = 64 * 2**20
    require_token: bool = Field(
        False, description="refuse requests without an API token (`serve` sets it when listening beyond loopback)"
    )
    max_body_bytes: int = Field(2**20, description="largest request body other than an upload (413 beyond)")
    min_free_bytes: int = Field(16 * 2**20, description="free disk an upload or export needs to start (507 below)")
    heartbeat_s: float = 5.0
    lease_s: float = 120.0
    poll_s: float = 1.0
    events_poll_s: float = Field(0.2, gt=0, le=10, description="how often an event stream reads new events")

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'prunesearch.db'}"

    @property
    def allowed_model_roots(self) -> list[Path]:
        return self.model_roots if self.model_roots is not None else [self.data_dir / "models", EXAMPLES_DIR]

    @property
    def allowed_calibration_roots(self) -> list[Path]:
        if self.calibration_roots is not None:
            return self.calibration_roots
        return [self.data_dir / "calibration", self.datasets_dir, EXAMPLES_DIR]

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def export_root(self) -> Path:
        return self.exports_dir or self.data_dir / "exports"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings (cached; tests build their own `Settings`)."""
    return Settings()
