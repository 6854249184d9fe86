"""One settings object, read from ``LRTUNE_*`` environment variables (and ``.env``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

PLACEHOLDER_PASSWORDS = ("change-me",)  # .env.example's: refused, never a real password


def hide_password(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRTUNE_", env_file=".env", extra="ignore")

    database_url: SecretStr = Field(
        SecretStr("sqlite:///lrtune.db"), description="SQLite file or postgresql+psycopg://…")
    database_password: SecretStr | None = Field(
        None, description="the database password, put into database_url by lrtune (any "
        "character, no URL escaping needed)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int = Field(0, ge=0, description="0 leaves torch's default")

    # service
    api_tokens: SecretStr = Field(
        SecretStr(""), description="comma-separated bearer tokens accepted besides the token "
        "table")
    worker_tokens: SecretStr = Field(
        SecretStr(""), description="comma-separated worker tokens (claim and report trials of "
        "any non-external study, nothing else), for deployments that take secrets from the "
        "environment; or `lrtune token create --worker`")
    closed_reads: bool = False
    max_running_studies: int = Field(20, ge=1, description="running studies per principal")
    max_queued_trials: int = Field(100_000, ge=1, description="trials budgeted in one "
                                   "principal's running studies")
    session_hours: float = Field(12.0, gt=0, le=24 * 90, description="dashboard login lifetime")
    cookie_secure: bool | None = Field(
        None, description="mark the login cookie Secure; unset: when the request came over "
        "HTTPS")
    max_trials: int = Field(10_000, ge=1)
    max_epochs: int = Field(1_000, ge=1)
    max_pack: int = Field(1_024, ge=1)
    artifact_dir: Path | None = Field(
        None, description="folder for files uploaded in the dashboard (curve images need none)")
    max_inflight: int = Field(8, ge=1, description="requests served at once (the rest wait): "
                              "one process runs Python on one core at a time")
    max_queued: int = Field(100, ge=0, description="requests waiting for a turn; beyond, 503")
    queue_wait: float = Field(0.8, gt=0, description="seconds a request waits for a turn "
                              "before 503")
    shed_delay: float = Field(0.5, ge=0, description="seconds before a shed request's 503: "
                              "slows clients that retry at once")
    db_pool_size: int = Field(8, ge=1, description="database connections kept per process")
    db_max_overflow: int = Field(8, ge=0, description="connections beyond db_pool_size")
    db_pool_timeout: float = Field(10.0, gt=0, description="seconds to wait for a connection "
                                   "before 503")
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="bytes of one request body, "
                                "chunked included (413 above)")
    max_curve_steps: int = Field(100_000, ge=1, description="steps (epochs x steps_per_epoch) "
                                 "of one curve preview (422 above)")
    header_timeout: float = Field(10.0, gt=0, description="seconds a client has to send a "
                                  "request's head, from connecting or from the last response")
    keep_alive_timeout: float = Field(5.0, gt=0, description="seconds an idle keep-alive "
                                      "connection stays open")
    shutdown_timeout: float = Field(10.0, gt=0, description="seconds requests in flight get "
                                    "to finish after SIGTERM before the process ends anyway")

    # workers
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats")
    heartbeat_grace: int = Field(60, ge=2, description="seconds before a silent trial is lost")
    max_retries: int = Field(2, ge=0, description="re-runs of a lost trial before it stays FAIL")
    max_failures: int = Field(20, ge=0, description="failed trials beyond n_trials that fail "
                              "the whole study")
    idle_min: float = Field(0.2, gt=0, description="first idle backoff, seconds")
    idle_max: float = Field(5.0, gt=0, description="longest idle backoff, seconds")
    fused_compile: Literal["auto", "always", "never"] = Field(
        "auto", description="torch.compile a fused pack's training step: auto compiles once "
        "the pack's remaining work is estimated at fused_compile_after seconds")
    fused_compile_after: float = Field(60.0, ge=0, description="seconds of remaining eager "
                                       "work that pay for compiling (auto)")
    fused_block: int = Field(0, ge=0, description="trials of a fused pack stepped at once; "
                             "0: on a CPU as many as fit its cache, on a GPU the whole pack")

    @model_validator(mode="after")
    def _workable(self) -> Settings:
        if self.heartbeat_grace <= self.heartbeat_interval:
            raise ValueError(f"heartbeat_grace ({self.heartbeat_grace} s) must exceed "
                             f"heartbeat_interval ({self.heartbeat_interval} s)")
        if self.db_pool_size + self.db_max_overflow < 2:
            raise ValueError("db_pool_size + db_max_overflow must be at least 2: Optuna's "
                             "first start on a new database takes two connections at once")
        password = self.database_password.get_secret_value() if self.database_password else \
            make_url(self.database_url.get_secret_value()).password
        if password in PLACEHOLDER_PASSWORDS:
            raise ValueError(f"the database password is the example's placeholder "
                             f"{password!r}: set a password of your own")
        return self

    def connection_url(self) -> str:
        """The database URL with ``database_password`` put in (secret: never print it)."""
        url = make_url(self.database_url.get_secret_value())
        if self.database_password is not None:
            url = url.set(password=self.database_password.get_secret_value())
        return url.render_as_string(hide_password=False)

    def printable_url(self) -> str:
        """The database URL with its password hidden."""
        return hide_password(self.connection_url())

    @property
    def compile_after(self) -> float | None:
        """Remaining seconds of a pack's eager work from which to compile (None: never)."""
        return {"always": 0.0, "never": None}.get(self.fused_compile, self.fused_compile_after)

    # clients
    url: str = "http://127.0.0.1:8000"
    token: SecretStr = SecretStr("")


@lru_cache
def get_settings() -> Settings:
    return Settings()
