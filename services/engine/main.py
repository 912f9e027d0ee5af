"""Entry point of the engine process: `python -m services.engine`."""

from __future__ import annotations

import asyncio
import logging

import grpc
import onnxruntime as ort

from services.common.grpc_server import configure_logging, run_service, serve
from services.common.settings import Settings
from services.common.tracing import Tracing, setup_tracing
from services.engine.constraints import Grammars
from services.engine.generation import Generator, HostedModel, loop_dispatch
from services.engine.metrics import serve_metrics
from services.engine.registry import ModelRegistry, choose_variant, load_entry
from services.engine.runtime import DecoderRuntime
from services.engine.scheduler import Scheduler
from services.engine.servicer import EngineServicer
from services.engine.text import TextCodec, TokenTable
from services.pb.engine.v1 import engine_pb2_grpc

log = logging.getLogger("services.engine")

MODEL_NAME = "smollm2-135m-instruct"


def load_models(settings: Settings, loop: asyncio.AbstractEventLoop) -> Generator:
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    model_dir = settings.models_dir / MODEL_NAME
    variant = choose_variant(model_dir, settings.model_variant, cuda)
    if variant is None:
        raise SystemExit(
            f"no exported model under {model_dir} (variant {settings.model_variant}); "
            "run `sluice model export` or `make model`"
        )
    entry = load_entry(model_dir / variant, settings.engine_max_context)
    log.info("model %s variant %s digest %s", entry.name, entry.variant, entry.digest)
    runtime = DecoderRuntime(
        entry.folder,
        max_batch=settings.engine_max_batch,
        max_len=entry.context_length,
        threads=settings.engine_threads,
        allow_spinning=settings.engine_allow_spinning,
    )
    runtime.warmup(settings.engine_prefill_tokens)
    codec = TextCodec.from_folder(entry.folder)
    # llguidance's view of the tokenizer, for constrained decoding and logprobs' token bytes.
    grammar_tokenizer = codec.grammar_tokenizer(runtime.spec.eos_token_ids)
    scheduler = Scheduler(
        runtime,
        codec.tokenizer,
        max_queue=settings.engine_max_queue,
        prefill_tokens=settings.engine_prefill_tokens,
        max_tokens_in_flight=settings.engine_max_tokens_in_flight,
        dispatch=loop_dispatch(loop),
        grammar_vocab=grammar_tokenizer.vocab_size,
    )
    hosted = HostedModel(
        entry,
        codec,
        scheduler,
        runtime.provider,
        settings.engine_default_max_tokens,
        grammars=Grammars(grammar_tokenizer),
        tokens=TokenTable.from_grammar_tokenizer(grammar_tokenizer),
    )
    return Generator(
        ModelRegistry([entry]),
        {entry.name: hosted},
        settings.engine_default_max_tokens,
        max_n=settings.engine_max_n,
    )


async def _serve(settings: Settings, tracing: Tracing) -> None:
    generator = load_models(settings, asyncio.get_running_loop())
    for model in generator.models.values():
        model.scheduler.start()
    metrics = None
    if settings.engine_metrics_port:
        schedulers = {name: model.scheduler for name, model in generator.models.items()}
        metrics = serve_metrics(settings.engine_metrics_port, schedulers)

    async def on_stop() -> None:
        if metrics is not None:
            metrics.shutdown()
        for model in generator.models.values():
            model.scheduler.stop()

    def register(server: grpc.aio.Server) -> None:
        engine_pb2_grpc.add_EngineServiceServicer_to_server(EngineServicer(generator), server)

    await serve(
        settings.engine_addr,
        register,
        ["sluice.engine.v1.EngineService"],
        on_stop=on_stop,
        grace_s=settings.drain_grace_s,
        delay_s=settings.drain_delay_s,
        tracing=tracing,
    )


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    tracing = setup_tracing("engine")
    try:
        run_service(_serve(settings, tracing))
    finally:
        tracing.shutdown()


if __name__ == "__main__":
    main()
