"""The console's route: its index and files, the security headers on every answer under
/console, and pages that keep within their Content-Security-Policy and ship with the package."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from services.common.settings import Settings
from services.edge.app import create_app
from services.edge.console import site

ROOT = Path(__file__).resolve().parents[2]
STATIC = site.STATIC_DIR
FILES = sorted(p.name for p in STATIC.iterdir() if p.is_file())
SCRIPTS = sorted(p for p in STATIC.iterdir() if p.suffix == ".js")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Without the lifespan: the console needs no backend, and none is running here.
    yield TestClient(create_app(Settings()))


def assert_secured(headers: object) -> None:
    for name, value in site.SECURITY_HEADERS.items():
        assert headers[name] == value, name  # type: ignore[index]


def test_the_policy_allows_this_origin_only_and_no_inline_code() -> None:
    directives = dict(d.split(" ", 1) for d in site.CONTENT_SECURITY_POLICY.split("; "))
    assert directives == {
        "default-src": "'self'",
        "script-src": "'self'",
        "style-src": "'self'",
        "connect-src": "'self'",
        "img-src": "'self' data:",
        "object-src": "'none'",
        "frame-ancestors": "'none'",
        "base-uri": "'none'",
        "form-action": "'self'",
    }
    assert site.SECURITY_HEADERS["x-content-type-options"] == "nosniff"
    assert site.SECURITY_HEADERS["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/console", "/console/"])
def test_index_is_served_without_authentication(client: TestClient, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/console/static/app.js"></script>' in resp.text
    assert_secured(resp.headers)
    assert client.head(path).status_code == 200


@pytest.mark.parametrize("name", FILES)
def test_every_file_is_served_with_its_type_and_the_headers(client: TestClient, name: str) -> None:
    resp = client.get(f"/console/static/{name}")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == site.CONTENT_TYPES[Path(name).suffix]
    assert resp.content == (STATIC / name).read_bytes()
    assert_secured(resp.headers)
    # Revalidation by ETag answers 304, with the headers too.
    again = client.get(f"/console/static/{name}", headers={"if-none-match": resp.headers["etag"]})
    assert again.status_code == 304
    assert_secured(again.headers)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/console/static/missing.js", 404),
        ("GET", "/console/static/", 404),
        ("GET", "/console/static", 404),
        ("GET", "/console/elsewhere", 404),
        ("GET", "/console/static/../site.py", 404),
        ("GET", "/console/static/%2e%2e/site.py", 404),
        ("GET", "/console/static/..%2fsite.py", 404),
        ("GET", "/console/static/__init__.py", 404),
        ("POST", "/console", 405),
        ("DELETE", "/console/", 405),
        ("POST", "/console/static/app.js", 405),
    ],
)
def test_refusals_under_console_carry_the_headers_too(
    client: TestClient, method: str, path: str, status: int
) -> None:
    resp = client.request(method, path)
    assert resp.status_code == status
    assert_secured(resp.headers)
    assert "import" not in resp.text  # no Python source escapes the static folder


def test_other_routes_are_not_given_the_console_policy(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert "content-security-policy" not in resp.headers


class _Page(HTMLParser):
    """What of index.html the policy governs: scripts, styles, handlers, local references."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_bodies: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_bodies.append(data)


@pytest.fixture(scope="module")
def page() -> _Page:
    parser = _Page()
    parser.feed((STATIC / "index.html").read_text())
    return parser


def test_the_html_has_no_inline_script_or_style(page: _Page) -> None:
    scripts = [attrs for tag, attrs in page.tags if tag == "script"]
    assert scripts and all(a.get("src") for a in scripts)
    assert all(not body.strip() for body in page.script_bodies)
    assert not [tag for tag, _ in page.tags if tag == "style"]
    for tag, attrs in page.tags:
        assert "style" not in attrs, tag
        handlers = [name for name in attrs if name.startswith("on")]
        assert not handlers, f"<{tag}> has inline handlers {handlers}"
        for name in ("href", "src", "action"):
            assert not (attrs.get(name) or "").lower().startswith("javascript:"), tag


def test_the_html_refers_only_to_files_that_exist_here(page: _Page) -> None:
    refs = [
        ref
        for _, attrs in page.tags
        for name in ("href", "src")
        if (ref := attrs.get(name)) and not ref.startswith("#")
    ]
    assert refs
    for ref in refs:
        assert ref.startswith("/console/static/"), ref
        assert (STATIC / ref.removeprefix("/console/static/")).is_file(), ref


def test_the_html_ids_the_scripts_use_exist() -> None:
    ids = set(re.findall(r'\bid="([^"]+)"', (STATIC / "index.html").read_text()))
    used = {name for s in SCRIPTS for name in re.findall(r'\$\("([^"]+)"\)', s.read_text())}
    # Built from names: $(`op-${section}`), $(`page-${name}`).
    sections = {f"op-{s}" for s in ("orgs", "keys", "projects", "providers", "plans")}
    pages = {f"page-{p}" for p in ("chat", "usage", "operator")}
    assert used - ids == set()
    assert sections | pages <= ids


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_import_only_local_modules(script: Path) -> None:
    imports = re.findall(r'^import .* from "([^"]+)";$', script.read_text(), flags=re.M)
    for module in imports:
        assert module.startswith("./") and (STATIC / module).is_file(), module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_avoid_what_the_policy_or_the_key_rules_forbid(script: Path) -> None:
    # The SVG namespace is a name, not a place the console connects to.
    text = script.read_text().replace('"http://www.w3.org/2000/svg"', "")
    forbidden = {
        "innerHTML": "HTML from strings (text from the API must stay text)",
        "outerHTML": "HTML from strings",
        "insertAdjacentHTML": "HTML from strings",
        "document.write": "HTML from strings",
        "eval(": "eval, which the policy refuses",
        "new Function": "eval, which the policy refuses",
        "localStorage": "persistent storage for keys",
        "document.cookie": "persistent storage for keys",
        'setAttribute("style"': "inline styles, which the policy refuses",
        "http://": "another origin",
        "https://": "another origin",
    }
    found = {word: why for word, why in forbidden.items() if word in text}
    assert not found, found


def test_the_static_files_ship_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["services.edge.console"]
    package_dir = STATIC.parent
    for path in STATIC.iterdir():
        rel = path.relative_to(package_dir).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} would not be installed"
        assert path.suffix in site.CONTENT_TYPES, f"{rel} would be installed but not served"
