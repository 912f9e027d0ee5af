"""The model registry: names and aliases mapped to exported folders pinned by content digest.

A model is served only if its files hash to the digest its manifest records, so the outputs
tested against a digest are the outputs served. `name@sha256:<hex>` pins a request to a digest and
fails if the engine serves a different one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import NotFound
from services.engine.export import compute_digest, read_manifest

log = logging.getLogger(__name__)

# Variants in order of preference per device; "auto" takes the first one that is exported.
CUDA_VARIANTS = ("cuda-fp16", "cuda-int4")
CPU_VARIANTS = ("cpu-int4",)
ALIASES = {"smollm2-135m-instruct": ("smollm2", "smollm2-135m")}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    digest: str
    variant: str
    folder: Path
    context_length: int
    created: int
    aliases: tuple[str, ...] = field(default=())


def choose_variant(model_dir: Path, preference: str, cuda_available: bool) -> str | None:
    if preference != "auto":
        return preference if (model_dir / preference / "manifest.json").exists() else None
    candidates = (*CUDA_VARIANTS, *CPU_VARIANTS) if cuda_available else CPU_VARIANTS
    for variant in candidates:
        if (model_dir / variant / "manifest.json").exists():
            return variant
    return None


def load_entry(folder: Path, max_context: int = 0) -> ModelEntry:
    """Reads one variant folder, verifying that its files match the manifest's digest."""
    manifest = read_manifest(folder)
    actual = compute_digest(folder)
    if actual != manifest["digest"]:
        raise RuntimeError(
            f"{folder}: files hash to {actual}, manifest pins {manifest['digest']}; re-export"
        )
    config = json.loads((folder / "genai_config.json").read_text())
    context = int(config["model"]["context_length"])
    if max_context:
        context = min(context, max_context)
    name = manifest["name"]
    return ModelEntry(
        name=name,
        digest=manifest["digest"],
        variant=manifest["variant"],
        folder=folder,
        context_length=context,
        created=int(manifest.get("created", 0)),
        aliases=ALIASES.get(name, ()),
    )


class ModelRegistry:
    def __init__(self, entries: list[ModelEntry]) -> None:
        self.entries = entries
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for key in (entry.name, *entry.aliases):
                self._by_name[key] = entry

    def resolve(self, ref: str) -> ModelEntry:
        name, _, pin = ref.partition("@")
        entry = self._by_name.get(name)
        if entry is None:
            raise NotFound(
                f"The model '{ref}' does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        if pin and pin != entry.digest:
            raise NotFound(
                f"The model '{name}' is served at {entry.digest}, not {pin}.",
                code="model_not_found",
                param="model",
            )
        return entry
