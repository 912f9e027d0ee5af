"""Key policy values: quota checks, allowed-model lists and the model rule."""

from __future__ import annotations

import pytest

from services.auth.policy import (
    MAX_SECONDS,
    Quota,
    check_models,
    check_quota,
    check_seconds,
    model_allowed,
)
from services.common.errors import InvalidArgument


def test_quota_defaults_and_period_normalization() -> None:
    assert check_quota(None) == Quota()
    assert check_quota(Quota(budget_period="")).budget_period == "none"
    assert check_quota(Quota(budget_period=" Month ")).budget_period == "month"
    q = Quota(rpm=60, tpm=1000, max_concurrent=4, budget_tokens=10**9, budget_period="day")
    assert check_quota(q) == q


@pytest.mark.parametrize(
    ("quota", "param"),
    [
        (Quota(rpm=-1), "quota.rpm"),
        (Quota(tpm=-5), "quota.tpm"),
        (Quota(max_concurrent=-1), "quota.max_concurrent"),
        (Quota(budget_tokens=-1), "quota.budget_tokens"),
        (Quota(budget_tokens=2**63), "quota.budget_tokens"),
        (Quota(budget_period="week"), "quota.budget_period"),
    ],
)
def test_bad_quota_names_the_field(quota: Quota, param: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_quota(quota)
    assert err.value.param == param


def test_seconds_bounds() -> None:
    assert check_seconds(0, "x") == 0
    assert check_seconds(MAX_SECONDS, "x") == MAX_SECONDS
    for bad in (-1, MAX_SECONDS + 1):
        with pytest.raises(InvalidArgument) as err:
            check_seconds(bad, "expires_in_seconds")
        assert err.value.param == "expires_in_seconds"


def test_models_are_stripped_and_deduplicated() -> None:
    assert check_models([" smollm2 ", "gpt-4o", "smollm2"]) == ("smollm2", "gpt-4o")
    assert check_models([]) == ()


@pytest.mark.parametrize("bad", ["", "  ", "x" * 201, "a\nb"])
def test_bad_model_entries_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        check_models(["ok", bad])
    assert err.value.param == "allowed_models"


def test_too_many_models_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        check_models([f"m{i}" for i in range(101)])


def test_model_rule() -> None:
    allowed = ("smollm2", "openai/gpt-4o")
    assert model_allowed("smollm2", allowed)
    assert model_allowed("smollm2@sha256:abc123", allowed)
    assert model_allowed("openai/gpt-4o", allowed)
    assert not model_allowed("smollm2-large", allowed)
    assert not model_allowed("smollm", allowed)
    assert not model_allowed("openai/gpt-4o-mini", allowed)
    assert not model_allowed("x@smollm2", allowed)
    # No list: every model; no model named: nothing to check.
    assert model_allowed("anything", ())
    assert model_allowed("", allowed)
