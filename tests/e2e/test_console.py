"""The web console in a real browser (Debian's Chromium, driven by Playwright) against the real
stack: a member signs in, chats with streamed answers and finds the request in the usage pages;
an operator creates a key that then works in the chat page, rotates and revokes keys, manages
provider credentials, plans and organizations. Every page must run without a console error or a
Content-Security-Policy violation, and no secret may reach a URL or persistent storage.

With SLUICE_WRITE_SCREENSHOTS=1 the run also writes docs/img/console-{chat,usage,operator}.png.
"""

from __future__ import annotations

import csv
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.e2e.processes import ADMIN_TOKEN, Services
from tests.e2e.providers import GPT, control, provider_secret, script

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MODEL = "smollm2-135m-instruct"
PINNED = re.compile(rf"{MODEL}@sha256:[0-9a-f]{{64}}")
USAGE_LINE = re.compile(r"([\d,]+) prompt \+ ([\d,]+) completion = ([\d,]+) tokens")
SCREENSHOTS = ROOT / "docs" / "img"
WRITE_SCREENSHOTS = os.environ.get("SLUICE_WRITE_SCREENSHOTS") == "1"
# Records the page's Content-Security-Policy violations; added through the browser's debugging
# protocol, which the policy does not govern.
RECORD_VIOLATIONS = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""
# Keeps every text the last answer showed, to tell a streamed answer from one shown at once.
WATCH_ANSWER = """() => {
  window.__seen = [];
  new MutationObserver(() => {
    const c = document.querySelector("#chat-log li.msg.assistant:last-child .content");
    if (c) window.__seen.push(c.textContent);
  }).observe(document.getElementById("chat-log"), {subtree: true, childList: true});
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `make test` installs it (scripts/ensure_chromium.sh), "
            "or run `apt-get install chromium`.",
            pytrace=False,
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Console:
    """One browser tab on the console, with what it logged and every URL it requested."""

    page: Page
    root: str
    problems: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def open(self, name: str) -> Page:
        if self.page.url.startswith(self.root + "/console"):
            self.page.click(f".tabs a[data-page={name}]")
        else:
            self.page.goto(f"{self.root}/console#{name}")
        return self.page

    def sign_in(self, secret: str) -> None:
        self.page.fill("#key-input", secret)
        self.page.click("#key-form button[type=submit]")

    def sign_in_operator(self, token: str) -> None:
        self.page.fill("#admin-input", token)
        self.page.click("#admin-form button[type=submit]")

    def section(self, name: str) -> None:
        self.page.click(f"#page-operator .subtabs button[data-section={name}]")

    def ask(self, text: str) -> Locator:
        """Sends a message; returns the answer once it is complete (its footer shows timing)."""
        # The model list loads after sign-in; until it has, there is no model to send to.
        expect(self.page.locator("#chat-model option").first).to_be_attached()
        answers = self.page.locator("#chat-log li.msg.assistant")
        count = answers.count()
        self.page.fill("#chat-input", text)
        self.page.press("#chat-input", "Enter")
        answer = answers.nth(count)
        expect(answer).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=120_000)
        expect(answer.locator(".meta")).not_to_be_empty()
        return answer

    def row(self, table: str, text: str) -> Locator:
        return self.page.locator(f"{table} tbody tr", has_text=text)

    def violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("() => window.__violations")
        return found

    def assert_clean(self, *secrets: str, refusals: tuple[int, ...] = ()) -> None:
        """No console error but the browser's notes of the API refusals the test asked for, no
        policy violation, and no secret in a URL or lasting storage."""
        noted = re.compile(r"console\.error: Failed to load resource: .* status of (\d+) ")
        statuses = [int(m.group(1)) for p in self.problems if (m := noted.match(p))]
        assert [p for p in self.problems if not noted.match(p)] == []
        assert sorted(statuses) == sorted(refusals)
        assert self.violations() == []
        stored = self.page.evaluate("() => [localStorage.length, document.cookie]")
        assert stored == [0, ""]
        for secret in secrets:
            assert not [u for u in self.urls if secret in u]

    def screenshot(self, name: str, full_page: bool = True) -> None:
        if WRITE_SCREENSHOTS:
            self.page.screenshot(path=SCREENSHOTS / f"console-{name}.png", full_page=full_page)


@pytest.fixture
def console(browser: Browser, gov: Services) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1360, "height": 860}, accept_downloads=True)
    context.add_init_script(script=RECORD_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    tab = Console(page, gov.edges["edge"].base_url.removesuffix("/v1"))

    def on_console(message: Any) -> None:
        if message.type in ("error", "warning"):
            tab.problems.append(f"console.{message.type}: {message.text}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: tab.problems.append(f"page error: {exc}"))
    page.on("request", lambda request: tab.urls.append(request.url))
    try:
        yield tab
    finally:
        context.close()


def api_error(method: str, url: str, token: str, **kwargs: Any) -> str:
    """The API's own `error.message` for a refused call."""
    resp = httpx.request(
        method, url, headers={"authorization": f"Bearer {token}"}, timeout=30, **kwargs
    )
    assert resp.status_code >= 400, resp.text
    message: str = resp.json()["error"]["message"]
    return message


def admin_get(gov: Services, path: str, **params: str) -> Any:
    resp = httpx.get(
        gov.edges["edge"].admin_url + path,
        params=params,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    resp.raise_for_status()
    return resp.json()


def member_get(gov: Services, key: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(
        gov.edges["edge"].base_url + path,
        params=params,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def model_ids(gov: Services, key: str) -> list[str]:
    return [m["id"] for m in member_get(gov, key, "/models").json()["data"]]


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def count(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.fixture
def openai_reply(gov: Services) -> Iterator[str]:
    """The OpenAI stand-in's next answers, reset afterwards for the tests that follow."""
    reply = "Hello from the organization's own OpenAI account."
    script(gov, "openai", reply=reply)
    try:
        yield reply
    finally:
        control(gov, "openai", "POST", "/_control/reset")


def test_member_chats_with_streamed_answers_and_finds_them_in_usage(
    console: Console, gov: Services, org: str, openai_reply: str
) -> None:
    gov.cli("orgs", "create", org)
    gov.cli(
        "providers",
        "add",
        "--org",
        org,
        "--provider",
        "openai",
        "--api-key",
        provider_secret("openai"),
    )
    key = gov.new_key(org, "console", "--budget-tokens", "200000", "--budget-period", "day")
    batch = gov.new_key(org, "batch")
    with OpenAI(base_url=gov.edges["edge"].base_url, api_key=batch, max_retries=0) as sdk:
        for _ in range(2):
            sdk.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
    page = console.open("chat")

    # A wrong key is refused with the API's own message.
    wrong = "sk-sluice-" + "x" * 40
    console.sign_in(wrong)
    expect(page.locator("#key-error")).to_have_text(
        api_error("GET", gov.edges["edge"].base_url + "/models", wrong)
    )
    console.sign_in(key)
    expect(page.locator("#page-chat")).to_be_visible()
    expect(page.locator("#identity-key")).to_have_text(f"API key …{key[-4:]}")
    hosted = page.locator("#chat-model optgroup[label='Hosted by Sluice'] option")
    byok = page.locator("#chat-model optgroup[label^='OpenAI'] option")
    expect(hosted.first).to_have_text(MODEL)
    expect(byok.filter(has_text=GPT)).to_have_count(1)

    page.fill("#chat-system", "You are a concise assistant.")
    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "40")
    page.evaluate(WATCH_ANSWER)
    answer = console.ask("Name three rivers in Europe and say one thing about each.")
    final = answer.locator(".content").inner_text()
    seen: list[str] = page.evaluate("() => window.__seen")
    partial = {text for text in seen if text and text != final}
    assert len(partial) >= 2, seen  # the text grew piece by piece as the stream arrived
    assert all(final.startswith(text) for text in partial)

    assert PINNED.fullmatch(answer.locator(".meta .pin").get_attribute("title") or "")
    usage = USAGE_LINE.search(answer.locator(".meta .usage").inner_text())
    assert usage, answer.locator(".meta").inner_text()
    prompt, completion, total = (count(g) for g in usage.groups())
    assert 0 < completion <= 40 and prompt + completion == total
    request_id = answer.locator(".meta .request-id").inner_text()
    (record,) = [r for r in gov.ledger(org) if r["request_id"] == request_id]
    assert (record["prompt_tokens"], record["completion_tokens"]) == (prompt, completion)
    assert record["status"] == "ok" and record["key_id"].startswith("key_")

    # The organization's own provider, through the same page and the same governance.
    page.select_option("#chat-model", GPT)
    byok_answer = console.ask("Say hello.")
    expect(byok_answer.locator(".content")).to_have_text(openai_reply)
    expect(byok_answer.locator(".meta .pin")).to_have_attribute("title", GPT)
    console.screenshot("chat", full_page=False)

    # Usage: the request is in the ledger's latest records, the charts and the totals.
    console.open("usage")
    expect(page.locator("#usage-records code.request-id", has_text=request_id)).to_have_count(1)
    totals = member_get(gov, key, "/usage/totals", group_by="model").json()["data"]
    requests = sum(t["requests"] for t in totals)
    assert requests == 4  # the batch key's two, and this page's two
    expect(page.locator("#usage-summary .stat", has_text="Requests").locator("b")).to_have_text(
        str(requests)
    )
    expect(page.locator("#usage-summary .stat", has_text="Total tokens").locator("b")).to_have_text(
        f"{sum(t['total_tokens'] for t in totals):,}"
    )
    expect(page.locator("#usage-legend li")).to_have_count(2)
    assert sorted(page.locator("#usage-legend li").all_inner_texts()) == sorted([MODEL, GPT])
    expect(page.locator("#usage-daily rect.bar")).to_have_count(2)  # today: two models stacked
    expect(page.locator("#usage-split-chart rect.bar")).to_have_count(2)

    # Budgets: the key's own, with what it has used.
    (key_budget,) = [
        b for b in member_get(gov, key, "/usage/budgets").json()["data"] if b["scope"] == "key"
    ]
    assert key_budget["used_tokens"] > 0
    budget = page.locator(".budget[data-scope=key]")
    expect(budget.locator(".used-label")).to_have_text(f"{key_budget['used_tokens']:,} used")
    expect(budget).to_contain_text("of 200,000 tokens")

    # Split by key: both keys of the organization, each its own series.
    page.select_option("#usage-split", "key")
    expect(page.locator("#usage-daily-title")).to_have_text("Tokens per day, by key")
    key_ids = sorted({r["key_id"] for r in gov.ledger(org)})
    assert len(key_ids) == 2
    expect(page.locator("#usage-legend li")).to_have_count(2)
    assert sorted(page.locator("#usage-legend li").all_inner_texts()) == key_ids
    page.select_option("#usage-split", "model")
    expect(page.locator("#usage-daily-title")).to_have_text("Tokens per day, by model")
    expect(page.locator("#usage-legend li")).to_have_count(2)
    console.screenshot("usage")

    # CSV export of what the filters select, through the API's own format=csv.
    with page.expect_download() as download:
        page.click("#usage-csv-records")
    path = download.value.path()
    assert download.value.suggested_filename.startswith("sluice-requests-")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == requests and request_id in {r["request_id"] for r in rows}
    assert key not in Path(path).read_text()

    # Filters: one model only.
    page.fill("#usage-model", GPT)
    page.click("#usage-filters button[type=submit]")
    expect(page.locator("#usage-records tbody tr")).to_have_count(1)
    expect(page.locator("#usage-records tbody tr")).to_contain_text(GPT)

    console.assert_clean(key, batch, refusals=(401,))  # the wrong key
    session = page.evaluate("() => Object.values(sessionStorage)")
    assert session == [key]  # held for this tab only
    page.click("#sign-out-key")
    expect(page.locator("#key-sign-in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length") == 0


def test_operator_creates_a_key_that_works_then_revokes_it(
    console: Console, gov: Services, org: str
) -> None:
    page = console.open("operator")
    admin_url = gov.edges["edge"].admin_url
    console.sign_in_operator("not-the-operator-token")
    expect(page.locator("#admin-error")).to_have_text(
        api_error("GET", admin_url + "/plans", "not-the-operator-token")
    )
    console.sign_in_operator(ADMIN_TOKEN)
    expect(page.locator("#page-operator")).to_be_visible()

    # An organization on a plan, and a project with a budget.
    page.fill("#op-org-create [name=name]", org)
    page.select_option("#op-org-create [name=plan]", "team")
    page.click("#op-org-create button[type=submit]")
    expect(page.locator("#op-notice")).to_have_text(f"Organization {org} created on the team plan.")
    expect(console.row("#op-orgs-table", org).locator(".badge.plan")).to_have_text("team")
    expect(page.locator("#op-org")).to_have_value(org)
    console.section("projects")
    page.fill("#op-project-create [name=name]", "web")
    page.fill("#op-project-create [name=budget_tokens]", "500000")
    page.click("#op-project-create button[type=submit]")
    expect(console.row("#op-projects-table", "web")).to_contain_text("500,000 / month")

    # A key with limits, budget, allowed models and an IP allowlist; its secret shown once.
    console.section("keys")
    form = "#op-key-create"
    page.fill(f"{form} [name=name]", "console-made")
    page.select_option(f"{form} [name=project]", "web")
    page.fill(f"{form} [name=allowed_models]", MODEL)
    page.fill(f"{form} [name=allowed_ips]", "127.0.0.1/32, ::1")
    page.fill(f"{form} [name=rpm]", "30")
    page.fill(f"{form} [name=budget_tokens]", "50000")
    page.select_option(f"{form} [name=budget_period]", "day")
    page.click(f"{form} button[type=submit]")
    expect(page.locator("#op-secret")).to_be_visible()
    secret = page.locator("#op-secret-value").inner_text()
    assert re.fullmatch(r"sk-sluice-\S+", secret)
    row = console.row("#op-keys-table", "console-made")
    for shown in ("web", MODEL, "127.0.0.1/32, ::1/128", "30 rpm", "50,000 / day", "active"):
        expect(row).to_contain_text(shown)
    (made,) = admin_get(gov, "/keys", org=org)["data"]
    assert made["project_name"] == "web" and made["allowed_models"] == [MODEL]
    assert made["quota"]["rpm"] == 30 and made["quota"]["budget_tokens"] == 50000
    assert made["quota"]["budget_period"] == "day"
    console.screenshot("operator")
    page.click("#op-secret-dismiss")
    expect(page.locator("#op-secret")).to_be_hidden()
    assert secret not in page.content()

    # The new key, signed in on the chat page, answers.
    console.open("chat")
    console.sign_in(secret)
    answer = console.ask("Say hi.")
    assert PINNED.fullmatch(answer.locator(".meta .pin").get_attribute("title") or "")
    expect(answer.locator(".meta .usage")).to_contain_text("tokens")
    (record,) = gov.ledger(org)
    assert record["key_id"] == made["id"] and record["status"] == "ok"

    # Revoked in the operator view, it is refused with the API's own message.
    console.open("operator")
    console.section("keys")
    revoke = console.row("#op-keys-table", "console-made").locator("button", has_text="Revoke")
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(console.row("#op-keys-table", "console-made").locator(".badge")).to_have_text("revoked")
    expect(page.locator("#op-notice")).to_contain_text("revoked")
    refusal = refused_message(gov, secret)
    console.open("chat")
    expect(page.locator("#chat-models-error")).to_have_text(refusal)  # the model list, refused
    page.click("#chat-reset")
    page.fill("#chat-input", "Are you still there?")
    page.press("#chat-input", "Enter")
    expect(page.locator("#chat-log li.msg.assistant.error .alert")).to_have_text(refusal)
    assert "revoked" in refusal
    # The wrong operator token, then the revoked key's model list and chat.
    console.assert_clean(secret, ADMIN_TOKEN, refusals=(401, 401, 401))


def refused_message(gov: Services, secret: str) -> str:
    """The chat endpoint's 401 message for a revoked key, once every edge cache has let it go
    (an edge may cache a successful authentication for up to a second)."""
    url = gov.edges["edge"].base_url + "/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    deadline = time.monotonic() + 10
    while True:
        resp = httpx.post(url, json=body, headers={"authorization": f"Bearer {secret}"}, timeout=30)
        if resp.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert resp.status_code == 401, resp.text
    message: str = resp.json()["error"]["message"]
    return message


def test_operator_rotates_keys_and_manages_providers_plans_and_orgs(
    console: Console, gov: Services, org: str
) -> None:
    old = gov.new_key(org, "rotating")
    page = console.open("operator")
    console.sign_in_operator(ADMIN_TOKEN)
    page.select_option("#op-org", org)

    # Rotation with a grace period: a new secret, shown once; the old one works an hour more.
    console.section("keys")
    page.select_option("#op-rotate-grace", "3600")
    console.row("#op-keys-table", "rotating").locator("button", has_text="Rotate").click()
    expect(page.locator("#op-secret")).to_be_visible()
    new = page.locator("#op-secret-value").inner_text()
    assert new != old and new.startswith("sk-sluice-")
    expect(page.locator("#op-notice")).to_contain_text("the previous secret works until")
    expect(console.row("#op-keys-table", "rotating")).to_contain_text(
        f"previous sk-sluice-...{old[-4:]}"
    )
    for secret in (old, new):
        assert member_get(gov, secret, "/models").status_code == 200

    # Provider credentials: added, listed by fingerprint only, removed.
    console.section("providers")
    provider_key = provider_secret("openai")
    page.fill("#op-provider-add [name=name]", "team-openai")
    page.fill("#op-provider-add [name=api_key]", provider_key)
    page.click("#op-provider-add button[type=submit]")
    row = console.row("#op-providers-table", "team-openai")
    expect(row).to_have_count(1)
    (stored,) = admin_get(gov, "/providers", org=org)["data"]
    expect(row.locator("code").first).to_have_text(stored["fingerprint"])
    assert stored["fingerprint"].endswith(provider_key[-4:])
    expect(page.locator("#op-provider-add [name=api_key]")).to_have_value("")
    assert provider_key not in page.content()
    # The organization's keys now see the provider's models (edges cache the list for 5 s).
    assert eventually(lambda: GPT in model_ids(gov, new))
    remove = row.locator("button", has_text="Remove")
    remove.click()
    remove.click()
    expect(row).to_have_count(0)
    assert admin_get(gov, "/providers", org=org)["data"] == []

    # Plans: a new one, then the organization moved onto it with limits of its own.
    console.section("plans")
    plan = f"console-{uuid.uuid4().hex[:8]}"
    page.fill("#op-plan-put [name=name]", plan)
    page.fill("#op-plan-put [name=monthly_tokens]", "123456")
    page.fill("#op-plan-put [name=rpm]", "90")
    page.click("#op-plan-put button[type=submit]")
    expect(console.row("#op-plans-table", plan)).to_contain_text("123,456")
    (saved,) = [p for p in admin_get(gov, "/plans")["data"] if p["name"] == plan]
    assert (saved["monthly_tokens"], saved["rpm"]) == (123456, 90)
    console.row("#op-plans-table", plan).locator("button", has_text="Edit").click()
    expect(page.locator("#op-plan-put [name=monthly_tokens]")).to_have_value("123456")

    console.section("orgs")
    console.row("#op-orgs-table", org).locator("button").click()
    expect(page.locator("#op-org-edit-name")).to_have_text(org)
    page.select_option("#op-org-edit [name=plan]", plan)
    page.fill("#op-org-edit [name=rpm]", "100")
    page.click("#op-org-edit button[type=submit]")
    expect(console.row("#op-orgs-table", org).locator(".badge.plan")).to_have_text(plan)
    expect(console.row("#op-orgs-table", org)).to_contain_text("100 rpm")
    policy = admin_get(gov, f"/organizations/{org}")["policy"]
    assert policy["plan"] == plan and policy["quota"]["rpm"] == 100
    console.assert_clean(old, new, provider_key, ADMIN_TOKEN)


def test_every_console_answer_carries_the_policy_and_the_browser_enforces_it(
    console: Console, gov: Services
) -> None:
    root = console.root
    with httpx.Client(base_url=root, timeout=30) as http:
        for path in ("/console", "/console/static/app.js", "/console/static/nope.js"):
            resp = http.get(path)
            policy = resp.headers["content-security-policy"]
            assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["referrer-policy"] == "no-referrer"
    page = console.open("chat")
    expect(page.locator("#key-sign-in")).to_be_visible()
    assert console.problems == [] and console.violations() == []
    # What the policy forbids, tried in the page, is refused by the browser.
    page.evaluate(
        """() => {
          const s = document.createElement("script");
          s.textContent = "window.__inline = true";
          document.head.append(s);
          const d = document.createElement("div");
          d.setAttribute("style", "color: red");
          document.body.append(d);
        }"""
    )
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.__inline === undefined")
    directives = {v.split(" ")[0] for v in console.violations()}
    assert {"script-src-elem", "style-src-attr"} <= directives
