"""Upstream model names, limits, image bounds and listings."""

from __future__ import annotations

import pytest

from services.common.settings import Settings
from services.edge.errors import APIError
from services.edge.providers.catalog import (
    Catalog,
    Limits,
    UpstreamModel,
    is_upstream,
    parse,
    split_names,
)


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
        with pytest.raises(APIError) as info:
            parse(bad)
        assert (info.value.status, info.value.code) == (404, "model_not_found")


def test_limits_match_the_longest_known_prefix_else_the_default() -> None:
    catalog = Catalog({}, {"openai": 64_000, "anthropic": 100_000})
    assert catalog.limits(UpstreamModel("openai", "gpt-4o-mini-2024-07-18")).max_output_tokens == (
        16_384
    )
    assert catalog.limits(UpstreamModel("openai", "gpt-4.1-mini")).context_length == 1_047_576
    assert catalog.limits(UpstreamModel("openai", "my-finetune")) == Limits(64_000)
    assert catalog.limits(UpstreamModel("anthropic", "claude-sonnet-4-20250514")) == Limits(
        200_000, 64_000, 1_600
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


def test_image_bounds_are_the_documented_maxima() -> None:
    catalog = Catalog({}, {})
    # gpt-4o-mini's tiles cost 2,833 + 5,667 each, at most 8 tiles.
    assert catalog.image_tokens(UpstreamModel("openai", "gpt-4o-mini-2024-07-18")) == 48_169
    assert catalog.image_tokens(UpstreamModel("openai", "gpt-4o")) == 85 + 8 * 170
    assert catalog.image_tokens(UpstreamModel("anthropic", "claude-3-5-haiku-latest")) == 1_600
    # An unknown model is bounded by the most expensive known one of its provider.
    assert catalog.image_tokens(UpstreamModel("openai", "my-vision-finetune")) == 48_169
    assert catalog.image_tokens(UpstreamModel("anthropic", "claude-next")) == 1_600
