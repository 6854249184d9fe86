"""One settings object, read from ``LRTUNE_*`` environment variables (and ``.env``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LRTUNE_", env_file=".env", extra="ignore")

    database_url: str = "sqlite:///lrtune.db"
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int = Field(0, ge=0, description="0 leaves torch's default")

    # service
    api_tokens: str = Field("", description="comma-separated bearer tokens accepted for writes")
    closed_reads: bool = False
    max_trials: int = Field(10_000, ge=1)
    max_epochs: int = Field(1_000, ge=1)
    max_pack: int = Field(1_024, ge=1)
    artifact_dir: Path | None = Field(
        None, description="folder for files uploaded in the dashboard (curve images need none)")
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

    @property
    def compile_after(self) -> float | None:
        """Remaining seconds of a pack's eager work from which to compile (None: never)."""
        return {"always": 0.0, "never": None}.get(self.fused_compile, self.fused_compile_after)

    # clients
    url: str = "http://127.0.0.1:8000"
    token: str = ""


@lru_cache
def get_settings() -> Settings:
    return Settings()
