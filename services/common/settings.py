"""Configuration for every service, read once from `SLUICE_*` environment variables.

A `Settings` object is built in each process's `main()` and passed down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All `SLUICE_` variables; the README's configuration table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix="SLUICE_", extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="Local state: SQLite file, secrets.")
    database_url: str = Field(
        default="",
        description="SQLAlchemy async URL; empty = SQLite file in data_dir.",
    )
    models_dir: Path = Field(default=Path("models"), description="Exported model folders.")
    model_variant: str = Field(
        default="auto",
        description="Export variant to serve: auto, cpu-int4, cuda-fp16 or cuda-int4.",
    )
    auth_addr: str = Field(default="127.0.0.1:50051", description="Auth gRPC address.")
    metering_addr: str = Field(default="127.0.0.1:50052", description="Metering gRPC address.")
    engine_addr: str = Field(default="127.0.0.1:50053", description="Engine gRPC address.")
    edge_host: str = Field(default="127.0.0.1", description="Edge HTTP bind host.")
    edge_port: int = Field(default=8000, description="Edge HTTP port.")
    key_secret: str = Field(
        default="",
        description="HMAC secret for API key hashes; empty = generated into data_dir once.",
    )
    engine_threads: int = Field(
        default=0, description="ONNX Runtime intra-op threads; 0 = one per CPU core."
    )
    engine_allow_spinning: bool = Field(
        default=True, description="Let ONNX Runtime's idle worker threads spin between ops."
    )
    engine_max_batch: int = Field(
        default=32, description="Sequences decoded together in one step (KV cache slots)."
    )
    engine_max_context: int = Field(
        default=8192, description="Longest prompt + completion served; capped by the model."
    )
    engine_prefill_tokens: int = Field(
        default=384,
        description="Prompt tokens processed between two decode steps (chunked prefill budget).",
    )
    engine_max_tokens_in_flight: int = Field(
        default=131072,
        description="Prompt + completion tokens of all running sequences; 0 = slots only.",
    )
    engine_default_max_tokens: int = Field(
        default=512,
        description="Completion cap when a request sets no max_tokens; 0 = up to the context.",
    )
    engine_max_queue: int = Field(
        default=256, description="Requests waiting for the engine before it refuses more."
    )
    request_timeout_s: float = Field(
        default=600.0, description="Deadline the edge gives each engine call."
    )
    log_level: str = Field(default="INFO", description="Python logging level.")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'sluice.db').resolve()}"

    def resolved_key_secret(self) -> bytes:
        """The API-key HMAC secret: from the environment, else a file created once (mode 0600)."""
        if self.key_secret:
            return self.key_secret.encode()
        path = self.data_dir / "key_secret"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: when two services start at once, exactly one writes the secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip().encode()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        return path.read_text().strip().encode()
