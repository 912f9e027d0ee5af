"""Upstream model names, limits and listings, and the router that resolves them per organization."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.settings import Settings
from services.engine.upstream.base import UpstreamBackend
from services.engine.upstream.catalog import (
    Catalog,
    Limits,
    UpstreamModel,
    is_upstream,
    parse,
    split_names,
)
from services.engine.upstream.router import UpstreamRouter
from tests.fakes.stubs import StubCredentials, chat, collect


@pytest.mark.parametrize(
    ("ref", "upstream"),
    [
        ("openai/gpt-4o", True),
        ("anthropic/claude-sonnet-4-0", True),
        ("openai/", True),
        ("smollm2", False),
        ("smollm2-135m-instruct@sha256:abc", False),
        ("mistral/large", False),
        ("openai", False),
    ],
)
def test_provider_prefix_decides_the_route(ref: str, upstream: bool) -> None:
    assert is_upstream(ref) is upstream


def test_parse() -> None:
    model = parse("openai/ft:gpt-4o-mini:acme::abc123")
    assert model == UpstreamModel("openai", "ft:gpt-4o-mini:acme::abc123")
    assert model.name == "openai/ft:gpt-4o-mini:acme::abc123"
    for bad in ("openai/", "anthropic/claude@sha256:00", "openai/ gpt-4o"):
        with pytest.raises(NotFound) as info:
            parse(bad)
        assert info.value.code == "model_not_found"


def test_limits_match_the_longest_known_prefix_else_the_default() -> None:
    catalog = Catalog({}, {"openai": 64_000, "anthropic": 100_000})
    assert catalog.limits(UpstreamModel("openai", "gpt-4o-mini-2024-07-18")).max_output_tokens == (
        16_384
    )
    assert catalog.limits(UpstreamModel("openai", "gpt-4.1-mini")).context_length == 1_047_576
    assert catalog.limits(UpstreamModel("openai", "my-finetune")) == Limits(64_000)
    assert catalog.limits(UpstreamModel("anthropic", "claude-sonnet-4-20250514")) == Limits(
        200_000, 64_000
    )
    assert catalog.limits(UpstreamModel("anthropic", "claude-next")) == Limits(100_000)


def test_model_info() -> None:
    info = Catalog({}, {}).info(UpstreamModel("anthropic", "claude-3-5-haiku-latest"))
    assert info.name == "anthropic/claude-3-5-haiku-latest"
    assert (info.digest, info.provider, info.owned_by) == ("", "anthropic", "anthropic")
    assert info.context_length == 200_000


def test_settings_choose_the_listed_models_and_defaults() -> None:
    assert split_names(" a, b,,a ,c ") == ["a", "b", "c"]
    default = Catalog.from_settings(Settings())
    assert default.listed["openai"] == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini"]
    assert default.listed["anthropic"] == ["claude-3-5-haiku-latest", "claude-sonnet-4-0"]
    catalog = Catalog.from_settings(
        Settings(openai_models="gpt-4o", anthropic_models="", openai_context_length=32_000)
    )
    names = [m.name for m in catalog.listed_models(frozenset({"openai", "anthropic"}))]
    assert names == ["openai/gpt-4o"]
    assert catalog.limits(UpstreamModel("openai", "unknown")).context_length == 32_000


def router(keys: dict[tuple[str, str], str]) -> UpstreamRouter:
    catalog = Catalog(
        {"openai": ["gpt-4o-mini", "gpt-4o"], "anthropic": ["claude-sonnet-4-0"]},
        {"openai": 128_000, "anthropic": 200_000},
    )
    backends: dict[str, UpstreamBackend] = {}
    return UpstreamRouter(catalog, StubCredentials(keys), backends)


async def test_upstream_models_resolve_only_with_a_credential() -> None:
    r = router({("org-a", "openai"): "sk-a"})
    info = await r.resolve("openai/gpt-4.1-nano", "org-a")
    assert (info.name, info.provider) == ("openai/gpt-4.1-nano", "openai")
    for ref, org in (("anthropic/claude-sonnet-4-0", "org-a"), ("openai/gpt-4o", "org-b")):
        with pytest.raises(NotFound) as exc:
            await r.resolve(ref, org)
        assert exc.value.code == "model_not_found"
        assert f"no {ref.split('/')[0]} credential" in exc.value.message
    with pytest.raises(NotFound):
        await r.resolve("openai/gpt-4o", "")


async def test_listing_follows_the_organizations_credentials() -> None:
    r = router({("org-a", "openai"): "sk-a", ("org-b", "anthropic"): "sk-b"})
    assert [m.name for m in await r.list_models("org-a")] == [
        "openai/gpt-4o-mini",
        "openai/gpt-4o",
    ]
    assert [m.name for m in await r.list_models("org-b")] == ["anthropic/claude-sonnet-4-0"]
    assert await r.list_models("org-c") == []


async def test_generate_without_a_credential_is_not_found() -> None:
    r = router({})
    with pytest.raises(NotFound) as exc:
        await collect(r.generate(chat("openai/gpt-4o", ("user", "hi"), org_id="org-a")))
    assert "no openai credential" in exc.value.message


def test_token_counting_is_refused_for_upstream_models() -> None:
    with pytest.raises(InvalidArgument):
        router({}).count_tokens("openai/gpt-4o")
