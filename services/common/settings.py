"""Configuration for every service, read once from `SLUICE_*` environment variables.

A `Settings` object is built in each process's `main()` and passed down; no service reads the
environment anywhere else. (One CLI input is not configuration and is read where it is used:
`sluice providers add` takes a provider key from SLUICE_PROVIDER_API_KEY. Traces are configured
by OpenTelemetry's standard OTEL_* variables, which `services.common.tracing` and the SDK read.)
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import string
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def decode_data_key(text: str, source: str) -> bytes:
    """A 32-byte key written as 64 hex characters or base64; errors never echo the text."""
    text = text.strip()
    if len(text) == 64 and all(c in string.hexdigits for c in text):
        return bytes.fromhex(text)
    try:
        padded = text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4)
        raw = base64.b64decode(padded, validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{source} must be 32 bytes written as 64 hex characters or base64")
    return raw


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
    # Each is the service's own bind address in its process and, in its callers, the target:
    # one address, a comma-separated list of replicas (IP literals) or dns:///name:port for a
    # name resolving to several (services.common.channels).
    auth_addr: str = Field(default="127.0.0.1:50051", description="Auth gRPC address(es).")
    metering_addr: str = Field(default="127.0.0.1:50052", description="Metering gRPC address(es).")
    engine_addr: str = Field(default="127.0.0.1:50053", description="Engine gRPC address(es).")
    edge_host: str = Field(default="127.0.0.1", description="Edge HTTP bind host.")
    edge_port: int = Field(default=8000, description="Edge HTTP port.")
    key_secret: str = Field(
        default="",
        description="HMAC secret for API key hashes; empty = generated into data_dir once.",
    )
    credentials_key: str = Field(
        default="",
        description="AES-256 data key of provider credentials, base64 or 64 hex characters; "
        "empty = generated into data_dir once.",
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
    engine_max_n: int = Field(
        default=8,
        ge=1,
        description="Most choices (n) one request may ask for; each takes a KV slot.",
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="Base URL of the OpenAI-compatible upstream (bring-your-own-key models).",
    )
    anthropic_base_url: str = Field(
        default="https://api.anthropic.com", description="Base URL of the Anthropic upstream."
    )
    upstream_connect_timeout_s: float = Field(
        default=5.0, description="Connect timeout for upstream provider requests."
    )
    upstream_read_timeout_s: float = Field(
        default=300.0, description="Longest wait for the next bytes of an upstream response."
    )
    upstream_max_retries: int = Field(
        default=3, description="Retries of an upstream request that failed before any output."
    )
    anthropic_default_max_tokens: int = Field(
        default=4096, description="max_tokens sent to Anthropic when a request sets none."
    )
    openai_models: str = Field(
        default="gpt-4o-mini,gpt-4o,gpt-4.1-mini",
        description="Comma-separated OpenAI models listed as openai/<model> in /v1/models.",
    )
    anthropic_models: str = Field(
        default="claude-3-5-haiku-latest,claude-sonnet-4-0",
        description="Comma-separated Anthropic models listed as anthropic/<model>.",
    )
    openai_context_length: int = Field(
        default=128000, description="Context length assumed for unlisted openai/ models."
    )
    anthropic_context_length: int = Field(
        default=200000, description="Context length assumed for unlisted anthropic/ models."
    )
    request_timeout_s: float = Field(
        default=600.0, description="Deadline the edge gives each engine call."
    )
    reservation_ttl_s: float = Field(
        default=900.0,
        gt=0,
        description="Metering releases a reservation not settled within this many seconds.",
    )
    redis_url: str = Field(
        default="",
        description="Redis holding the rate-limit windows of every metering replica, e.g. "
        "redis://host:6379/0; empty = the windows of one metering process, in its memory.",
    )
    redis_cluster: bool = Field(
        default=False, description="redis_url names a Redis Cluster node (cluster client)."
    )
    redis_prefix: str = Field(default="sluice", description="Prefix of every Redis key.")
    redis_timeout_s: float = Field(
        default=1.0,
        gt=0,
        description="Connect and answer timeout of Redis calls; past it admission fails closed.",
    )
    drain_grace_s: float = Field(
        default=25.0,
        ge=0,
        description="On SIGTERM, how long in-flight calls and streams may take to finish.",
    )
    drain_delay_s: float = Field(
        default=1.0,
        ge=0,
        description="On SIGTERM, seconds between reporting NOT_SERVING and refusing new calls.",
    )
    engine_metrics_port: int = Field(
        default=0, description="Port of the engine's Prometheus /metrics; 0 = not served."
    )
    responses_retention_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="Metering keeps a stored Responses API response this many seconds.",
    )
    log_level: str = Field(default="INFO", description="Python logging level.")
    trusted_proxies: str = Field(
        default="",
        description="Comma-separated CIDRs of proxies whose X-Forwarded-For the edge believes.",
    )
    admin_token: str = Field(
        default="",
        description="Operator token for /admin/v1; empty = generated into data_dir once.",
    )

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'sluice.db').resolve()}"

    def credentials_key_path(self) -> Path:
        """Where the provider-credentials data key is kept when `credentials_key` is empty."""
        return self.data_dir / "credentials_key"

    def resolved_credentials_key(self) -> bytes:
        """The 32-byte data key of provider credentials: the environment's, else a 0600 file."""
        if self.credentials_key:
            return decode_data_key(self.credentials_key, "SLUICE_CREDENTIALS_KEY")
        path = self.credentials_key_path()
        if path.exists():
            mode = path.stat().st_mode & 0o777
            # Whoever can read this file can read every stored provider key.
            if mode & 0o077:
                raise ValueError(
                    f"{path} is accessible to group or others (mode {mode:o}); "
                    f"run `chmod 600 {path}`"
                )
        return decode_data_key(self.secret_file(path.name), str(path))

    def resolved_key_secret(self) -> bytes:
        """The API-key HMAC secret: from the environment, else a file created once (mode 0600)."""
        if self.key_secret:
            return self.key_secret.encode()
        return self.secret_file("key_secret").encode()

    def resolved_admin_token(self) -> bytes:
        """The operator token of /admin/v1: from the environment, else a file created once."""
        if self.admin_token:
            return self.admin_token.encode()
        return self.secret_file("admin_token", prefix="sluice-admin-").encode()

    def secret_file(self, name: str, prefix: str = "") -> str:
        """A random secret kept in `data_dir/name` (mode 0600), created on first use."""
        path = self.data_dir / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            # O_EXCL: when two services start at once, exactly one writes the secret.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(prefix + secrets.token_hex(32))
        return path.read_text().strip()
