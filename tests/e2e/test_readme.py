"""The README's examples work as written (against this test stack's ports)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.e2e.conftest import ROOT, Stack
from tests.e2e.processes import Services
from tests.e2e.providers import received, script


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def run_example(stack: Stack, code: str) -> str:
    edge = stack.base_url.removesuffix("/v1").removeprefix("http://")
    code = code.replace("127.0.0.1:50053", stack.env["SLUICE_ENGINE_ADDR"])
    return run_code(code, edge, {**stack.env, "SLUICE_API_KEY": stack.dev_key})


def run_code(code: str, edge: str, env: dict[str, str]) -> str:
    code = code.replace("127.0.0.1:8000", edge)
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


def test_readme_structured_output_example(stack: Stack) -> None:
    block = next(b for b in python_blocks() if "completions.parse(" in b)
    out = run_example(stack, block)
    assert re.fullmatch(r"name='[^']+' country='[^']+'\n", out)


def test_readme_grpc_example(stack: Stack) -> None:
    grpc_block = next(b for b in python_blocks() if "engine_pb2_grpc" in b)
    out = run_example(stack, grpc_block)
    assert re.search(r"(stop|length)", out)
    assert "completion_tokens" in out


def test_readme_responses_example(gov: Services, byok: dict[str, str]) -> None:
    out = byok_example(gov, byok, "client.responses.create(")
    first, second = out.strip().splitlines()[0], out.strip().splitlines()[-1]
    assert "Paris" in first
    assert second.endswith("True")  # the follow-up's input held the first turn


def byok_example(gov: Services, byok: dict[str, str], marker: str) -> str:
    block = next(b for b in python_blocks() if marker in b)
    edge = gov.edges["edge"].base_url.removesuffix("/v1").removeprefix("http://")
    return run_code(block, edge, {**gov.env, "SLUICE_API_KEY": byok["key"]})


def test_readme_tools_example(gov: Services, byok: dict[str, str]) -> None:
    calls = [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    script(gov, "openai", tool_calls=calls, reply="It is sunny in Paris.")
    out = byok_example(gov, byok, "tools = [")
    assert out.strip() == "It is sunny in Paris."
    second = received(gov, "openai")[1]["body"]["messages"]
    assert second[-1] == {
        "role": "tool",
        "tool_call_id": second[-2]["tool_calls"][0]["id"],
        "content": "Sunny in Paris",
    }


def test_readme_anthropic_sdk_example(gov: Services, byok: dict[str, str]) -> None:
    script(gov, "anthropic", reply="Hello! How can I help?", prompt_tokens=10)
    out = byok_example(gov, byok, "import anthropic")
    assert out.startswith("Hello! How can I help?")
    assert "input_tokens=10" in out
