"""The edge fuzzed over its own OpenAPI document (`/openapi.json`) with schemathesis: valid and
invalid requests to every operation, with a valid API key on /v1 and the operator token on
/admin/v1. No answer may be a 5xx, and every answer must be what the document says: a documented
status code and content type, and a body of the documented schema, errors included (OpenAI's
error shape, Anthropic's on /v1/messages*). A failure shows schemathesis's report, with a curl
command that reproduces each problem.

The run has a stack of its own (SQLite), since fuzzed admin calls change organizations, plans and
keys, and fuzzes /v1 before /admin/v1, whose calls revoke the keys they list. It is bounded for CI
by the examples per operation and by the stack's settings: a context of CONTEXT tokens,
DEFAULT_MAX_TOKENS when a request sets no limit, and at most MAX_N choices, so that a fuzzed
hosted request generates CONTEXT * MAX_N tokens at most whatever its max_tokens (a larger one is
the engine's 400), and most generate DEFAULT_MAX_TOKENS. The document's request examples, the
values schemathesis mutates first, and a share of the generated bodies name the hosted model, so
that fuzzing reaches the engine; a share of the admin calls name an organization that exists.
Upstream providers point at a closed loopback port: no credential exists, and nothing could leave
the machine if one were added. The cases run are counted in pytest's terminal summary.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack, stop_stack

ADMIN_TOKEN = "sluice-admin-fuzz-token"
HOSTED = "smollm2-135m-instruct"
ADMIN_ORG = "fuzz-admin"
CONTEXT = 128
DEFAULT_MAX_TOKENS = 8
MAX_N = 2
EXAMPLES_PER_OPERATION = 40
RUN_TIMEOUT_S = 300
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fuzz")
    closed = "http://127.0.0.1:9"
    stack = start_stack(
        f"sqlite+aiosqlite:///{tmp / 'sluice.db'}",
        tmp,
        SLUICE_ADMIN_TOKEN=ADMIN_TOKEN,
        SLUICE_ENGINE_MAX_CONTEXT=str(CONTEXT),
        SLUICE_ENGINE_MAX_N=str(MAX_N),
        SLUICE_ENGINE_DEFAULT_MAX_TOKENS=str(DEFAULT_MAX_TOKENS),
        SLUICE_OPENAI_BASE_URL=closed + "/v1",
        SLUICE_ANTHROPIC_BASE_URL=closed,
    )
    try:
        yield stack
    finally:
        stop_stack(stack)


def toml(value: object) -> str:
    """A TOML value: JSON's strings, numbers, booleans and arrays are TOML's too."""
    return json.dumps(value)


def config(stack: Stack) -> str:
    """schemathesis.toml for the run: credentials per security scheme, the checks, the bounds,
    and the dictionaries that name things that exist."""
    lines = [
        "color = false",
        'suppress-health-check = ["all"]',
        # One worker: CPython 3.11 before 3.11.8 can fail ast.parse when two threads parse at
        # once (gh-106905), which hypothesis does while it describes strategies.
        "workers = 1",
        "request-timeout = 120",
        "[generation]",
        f"max-examples = {EXAMPLES_PER_OPERATION}",
        'database = "none"',
        "[auth.openapi.ApiKey]",
        f"bearer = {toml(stack.dev_key)}",
        "[auth.openapi.AnthropicApiKey]",
        f"api_key = {toml(stack.dev_key)}",
        "[auth.openapi.OperatorToken]",
        f"bearer = {toml(ADMIN_TOKEN)}",
        "[dictionaries.hosted]",
        f"values = {toml([HOSTED])}",
        "[dictionaries.org]",
        f"values = {toml([ADMIN_ORG])}",
        "[parameters]",
        '"body.model" = { dictionary = "hosted", probability = 0.5 }',
        '"body.org" = { dictionary = "org", probability = 0.5 }',
        '"query.org" = { dictionary = "org", probability = 0.5 }',
        '"path.org" = { dictionary = "org", probability = 0.5 }',
        "[checks]",
        "enabled = false",
    ]
    for check in CHECKS:
        lines += [f"[checks.{check}]", "enabled = true"]
    return "\n".join(lines) + "\n"


class _CaseCount:
    """Puts the run's numbers in pytest's terminal summary, which `pytest -q` shows too."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.lines:
            terminalreporter.section("fuzzing the OpenAPI document")
            for line in self.lines:
                terminalreporter.write_line(line)


# /v1 first: the admin run lists keys and revokes what it finds, the run's own key included.
RUNS = (
    ("/v1 and the service routes", ("--exclude-path-regex", "^/admin/")),
    ("/admin/v1", ("--include-path-regex", "^/admin/")),
)


def test_fuzzed_requests_get_no_5xx_and_conform_to_the_document(
    fuzz_stack: Stack, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = fuzz_stack.base_url.removesuffix("/v1")
    with httpx.Client(timeout=30) as http:
        http.post(
            f"{root}/admin/v1/organizations",
            json={"name": ADMIN_ORG},
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        ).raise_for_status()
    (tmp_path / "schemathesis.toml").write_text(config(fuzz_stack))
    summary = _CaseCount()
    request.config.pluginmanager.register(summary, "sluice-fuzz-summary")
    failed = []
    for name, selection in RUNS:
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", *selection, f"{root}/openapi.json"],
            cwd=tmp_path,  # where it finds schemathesis.toml, and writes anything it keeps
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        output = run.stdout + run.stderr
        cases = re.search(r"Test cases:\s*\n\s*(\d+) generated", output)
        tested = re.search(r"Tested:\s*(\d+)", output)
        summary.lines.append(
            f"{name}: {cases.group(1) if cases else '?'} cases over "
            f"{tested.group(1) if tested else '?'} operations in "
            f"{time.monotonic() - started:.0f} s, schemathesis exit code {run.returncode}"
        )
        if run.returncode != 0 or not cases:
            failed.append(f"{name}:\n{output[-15000:]}")
        assert fuzz_stack.run.alive(), fuzz_stack.run.logs()[-5000:]
    assert not failed, "\n\n".join(failed)
