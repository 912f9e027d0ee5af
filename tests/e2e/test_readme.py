"""The README's examples work as written (against this test stack's ports)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.conftest import ROOT, Stack


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_example(stack: Stack, code: str) -> str:
    edge = stack.base_url.removesuffix("/v1").removeprefix("http://")
    code = code.replace("127.0.0.1:8000", edge)
    code = code.replace("127.0.0.1:50053", stack.env["SLUICE_ENGINE_ADDR"])
    env = {**stack.env, "SLUICE_API_KEY": stack.dev_key}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_readme_shows_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert "make run" in text and "make test" in text


def test_readme_sdk_example(stack: Stack) -> None:
    sdk = next(b for b in python_blocks() if "from openai import OpenAI" in b)
    out = run_example(stack, sdk)
    assert "Paris" in out
    assert "smollm2-135m-instruct@sha256:" in out


def test_readme_grpc_example(stack: Stack) -> None:
    grpc_block = next(b for b in python_blocks() if "engine_pb2_grpc" in b)
    out = run_example(stack, grpc_block)
    assert re.search(r"(stop|length)", out)
    assert "completion_tokens" in out
