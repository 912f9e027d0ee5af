"""The LiteLLM proxy as the gateway benchmark's peer: installed from PyPI into the benchmark's own
virtual environment (`.venv-bench/`, git-ignored, made on first use), started with a generated
config that maps one model name to the same stand-in upstream Sluice's BYOK path reaches.

One worker, a master key, no database: the proxy's lightest configuration, so the comparison is
against LiteLLM at its fastest, not against its logging to PostgreSQL. The services' own
environment never imports LiteLLM (its pins are not ours), and `make test` never installs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.config import ROOT

LITELLM_VERSION = "1.108.5"
PY_SPY_VERSION = "0.4.1"
REQUIREMENTS = (f"litellm[proxy]=={LITELLM_VERSION}", f"py-spy=={PY_SPY_VERSION}")
VENV = ROOT / ".venv-bench"
MASTER_KEY = "sk-litellm-bench-master-0123456789"
START_TIMEOUT_S = 120.0
INSTALL_TIMEOUT_S = 900.0


def render_config(
    model_name: str, upstream_model: str, api_base: str, api_key: str, master_key: str
) -> dict[str, Any]:
    """The proxy's config: `model_name` routed to the OpenAI-compatible `api_base` as
    `openai/<upstream_model>`, clients authenticated by `master_key`, nothing persisted."""
    return {
        "model_list": [
            {
                "model_name": model_name,
                "litellm_params": {
                    "model": f"openai/{upstream_model}",
                    "api_base": api_base,
                    "api_key": api_key,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"telemetry": False},
    }


def proxy_env(base: Mapping[str, str]) -> dict[str, str]:
    """The proxy's environment: no database URL to pick up, the bundled model cost map (no
    fetch at start), quiet logs."""
    env = {k: v for k, v in base.items() if k not in ("DATABASE_URL", "LITELLM_MASTER_KEY")}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOG="ERROR",
        PYTHONUNBUFFERED="1",
    )
    return env


def installed_version(venv: Path = VENV) -> str | None:
    """LiteLLM's version in the benchmark's environment, or None when there is none."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    out = subprocess.run(
        [str(python), "-c", "from importlib.metadata import version; print(version('litellm'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.stdout.strip() if out.returncode == 0 else None


def ensure_env(venv: Path = VENV, say: Any = print) -> Path:
    """The benchmark's environment with the pinned LiteLLM proxy and py-spy; installs them from
    PyPI when missing or at another version (minutes, once)."""
    if installed_version(venv) == LITELLM_VERSION and (venv / "bin" / "py-spy").exists():
        return venv
    say(f"installing {', '.join(REQUIREMENTS)} into {venv} (once)")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *REQUIREMENTS],
        check=True,
        timeout=INSTALL_TIMEOUT_S,
    )
    return venv


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    base_url: str  # http://127.0.0.1:PORT/v1
    master_key: str
    log: Path


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


@contextmanager
def running_proxy(
    venv: Path, workdir: Path, port: int, api_base: str, api_key: str, model_name: str
) -> Iterator[Proxy]:
    """`litellm --config ... --num_workers 1` on loopback until the block ends."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "litellm.yaml"
    # JSON is YAML: no YAML writer needed in this environment.
    config.write_text(
        json.dumps(render_config(model_name, model_name, api_base, api_key, MASTER_KEY), indent=1)
    )
    log = workdir / "litellm.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
             "--port", str(port), "--num_workers", "1"],
            cwd=workdir, env=proxy_env(os.environ), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        if not _wait_ready(proc, f"http://127.0.0.1:{port}/health/liveliness", START_TIMEOUT_S):
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the LiteLLM proxy did not start:\n{tail}")
        yield Proxy(proc, f"http://127.0.0.1:{port}/v1", MASTER_KEY, log)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
