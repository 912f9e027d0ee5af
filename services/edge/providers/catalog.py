"""Naming and listing of upstream provider models: "openai/<model>" and "anthropic/<model>".

Upstream models are not pinned by digest: the provider decides what a name means. The table of
known models only supplies context lengths, output caps and per-image token costs for
`ModelInfo` and reservations; any other model name is forwarded to the provider as-is, with the
provider's most expensive known image cost as its bound.

Image bounds are the providers' documented maxima for one image at any size and detail:
OpenAI's tile models cost a base plus a price per 512 px tile, at most 8 tiles after scaling
(gpt-4o: 85 + 8 x 170; gpt-4o-mini: 2,833 + 8 x 5,667), its patch models at most 1,536
patches times the model's multiplier; Anthropic resizes any image to about 1.15 megapixels,
about 1,600 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.settings import Settings
from services.edge.errors import APIError
from services.pb.engine.v1 import engine_pb2

OPENAI = "openai"
ANTHROPIC = "anthropic"
PROVIDERS = (OPENAI, ANTHROPIC)


@dataclass(frozen=True)
class Limits:
    context_length: int
    # The most tokens one response may have; None where the model has no separate output cap.
    max_output_tokens: int | None = None
    # The most prompt tokens one image can cost (see the module doc); 0 = the provider's largest.
    image_tokens: int = 0


# Keyed by name prefix, so dated snapshots ("gpt-4o-2024-08-06", "claude-sonnet-4-20250514")
# match their family; the longest matching prefix wins ("gpt-4o-mini" before "gpt-4o").
KNOWN_MODELS: dict[str, dict[str, Limits]] = {
    OPENAI: {
        "gpt-4o-mini": Limits(128_000, 16_384, 48_169),
        "gpt-4o": Limits(128_000, 16_384, 1_445),
        "gpt-4.1-mini": Limits(1_047_576, 32_768, 2_489),
        "gpt-4.1-nano": Limits(1_047_576, 32_768, 3_779),
        "gpt-4.1": Limits(1_047_576, 32_768, 1_445),
        "gpt-4-turbo": Limits(128_000, 4_096, 1_445),
        "gpt-3.5-turbo": Limits(16_385, 4_096),
        "o1": Limits(200_000, 100_000, 1_275),
        "o3": Limits(200_000, 100_000, 1_275),
        "o4-mini": Limits(200_000, 100_000, 2_642),
    },
    ANTHROPIC: {
        "claude-3-haiku": Limits(200_000, 4_096, 1_600),
        "claude-3-5-haiku": Limits(200_000, 8_192, 1_600),
        "claude-3-5-sonnet": Limits(200_000, 8_192, 1_600),
        "claude-3-7-sonnet": Limits(200_000, 64_000, 1_600),
        "claude-sonnet-4": Limits(200_000, 64_000, 1_600),
        "claude-opus-4": Limits(200_000, 32_000, 1_600),
    },
}


@dataclass(frozen=True)
class UpstreamModel:
    """A parsed upstream model reference: `provider` and the provider's own model name."""

    provider: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.provider}/{self.model}"


def is_upstream(ref: str) -> bool:
    """Whether a model reference names an upstream provider model (by its prefix)."""
    prefix, sep, _ = ref.partition("/")
    return bool(sep) and prefix in PROVIDERS


def parse(ref: str) -> UpstreamModel:
    """Splits "openai/<model>"; an empty model or a digest pin is not a model we can serve."""
    provider, _, model = ref.partition("/")
    if provider not in PROVIDERS or not model or "@" in model or model != model.strip():
        raise APIError(
            404,
            f"The model '{ref}' does not exist or you do not have access to it."
            + (" Upstream models cannot be pinned to a digest." if "@" in model else ""),
            code="model_not_found",
            param="model",
        )
    return UpstreamModel(provider, model)


def split_names(value: str) -> list[str]:
    """A comma-separated setting as a list, without blanks or duplicates, order kept."""
    seen: dict[str, None] = {}
    for part in value.split(","):
        if part.strip():
            seen.setdefault(part.strip(), None)
    return list(seen)


class Catalog:
    """Model limits and the models listed per provider, from the engine's settings."""

    def __init__(
        self,
        listed: dict[str, list[str]],
        default_context: dict[str, int],
        known: dict[str, dict[str, Limits]] | None = None,
        default_max_tokens: dict[str, int] | None = None,
    ) -> None:
        self.listed = listed
        self.default_context = default_context
        self.known = KNOWN_MODELS if known is None else known
        # What a backend sends as max_tokens when a request sets none (Anthropic requires one).
        self.default_max_tokens = default_max_tokens or {}

    @classmethod
    def from_settings(cls, settings: Settings) -> Catalog:
        return cls(
            listed={
                OPENAI: split_names(settings.openai_models),
                ANTHROPIC: split_names(settings.anthropic_models),
            },
            default_context={
                OPENAI: settings.openai_context_length,
                ANTHROPIC: settings.anthropic_context_length,
            },
            default_max_tokens={ANTHROPIC: settings.anthropic_default_max_tokens},
        )

    def limits(self, model: UpstreamModel) -> Limits:
        table = self.known.get(model.provider, {})
        best = ""
        for prefix in table:
            if model.model.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        if best:
            return table[best]
        return Limits(self.default_context.get(model.provider, 128_000))

    def image_tokens(self, model: UpstreamModel) -> int:
        """The most prompt tokens one image can cost this model (see the module doc)."""
        own = self.limits(model).image_tokens
        if own:
            return own
        known = [limits.image_tokens for limits in self.known.get(model.provider, {}).values()]
        return max(known, default=0) or max(
            lim.image_tokens for table in KNOWN_MODELS.values() for lim in table.values()
        )

    def info(self, model: UpstreamModel) -> engine_pb2.ModelInfo:
        limits = self.limits(model)
        caps = [
            c for c in (limits.max_output_tokens, self.default_max_tokens.get(model.provider)) if c
        ]
        return engine_pb2.ModelInfo(
            name=model.name,
            digest="",
            context_length=limits.context_length,
            owned_by=model.provider,
            provider=model.provider,
            default_max_tokens=min(caps) if caps else 0,
        )

    def listed_models(self, providers: set[str] | frozenset[str]) -> list[engine_pb2.ModelInfo]:
        """The configured models of each provider in `providers`, in `PROVIDERS` order."""
        return [
            self.info(UpstreamModel(provider, name))
            for provider in PROVIDERS
            if provider in providers
            for name in self.listed.get(provider, [])
        ]
