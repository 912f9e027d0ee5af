"""What a request's `model` names: a hosted model (the engine's, pinned by digest) or an upstream
provider's model (`openai/<model>`, `anthropic/<model>`) that the edge calls itself with the
organization's credential."""

from __future__ import annotations

from dataclasses import dataclass

from services.edge.providers.catalog import UpstreamModel
from services.pb.engine.v1 import engine_pb2


@dataclass(frozen=True)
class Target:
    info: engine_pb2.ModelInfo
    # None for a hosted model.
    upstream: UpstreamModel | None = None

    @property
    def provider(self) -> str:
        """ "sluice" for hosted models, else the provider's name (as the ledger records it)."""
        return self.upstream.provider if self.upstream else "sluice"

    @property
    def public_name(self) -> str:
        """The name responses carry: `name@sha256:<digest>` pins a hosted export; upstream
        models have no digest and keep their `provider/model` name."""
        info = self.info
        return f"{info.name}@{info.digest}" if info.digest else info.name

    @property
    def system_fingerprint(self) -> str | None:
        if not self.info.digest:
            return None
        return "fp_" + self.info.digest.removeprefix("sha256:")[:12]
