"""Entry point of the engine process: `python -m services.engine`."""

from __future__ import annotations

import asyncio
import logging

import grpc
import onnxruntime as ort

from services.common.grpc_server import configure_logging, run_service, serve
from services.common.settings import Settings
from services.engine.constraints import Grammars
from services.engine.generation import Generator, HostedModel, loop_dispatch
from services.engine.registry import ModelRegistry, choose_variant, load_entry
from services.engine.runtime import DecoderRuntime
from services.engine.scheduler import Scheduler
from services.engine.servicer import EngineServicer
from services.engine.text import TextCodec, TokenTable
from services.engine.upstream.credentials import AuthCredentials
from services.engine.upstream.router import UpstreamRouter
from services.pb.auth.v1 import auth_pb2_grpc
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


async def _serve(settings: Settings) -> None:
    generator = load_models(settings, asyncio.get_running_loop())
    for model in generator.models.values():
        model.scheduler.start()
    # Upstream models read each organization's provider key from auth (cached briefly).
    auth_channel = grpc.aio.insecure_channel(settings.auth_addr)
    credentials = AuthCredentials(auth_pb2_grpc.AuthServiceStub(auth_channel))
    upstream = UpstreamRouter.from_settings(settings, credentials)

    async def on_stop() -> None:
        for model in generator.models.values():
            model.scheduler.stop()
        await upstream.aclose()
        credentials.clear()
        await auth_channel.close()

    def register(server: grpc.aio.Server) -> None:
        engine_pb2_grpc.add_EngineServiceServicer_to_server(
            EngineServicer(generator, upstream), server
        )

    await serve(settings.engine_addr, register, ["sluice.engine.v1.EngineService"], on_stop=on_stop)


def main() -> None:
    settings = Settings()
    configure_logging(settings.log_level)
    # httpcore's DEBUG trace prints upstream response headers (which can name the customer's
    # provider organization); request headers, where the provider key is, are never printed.
    logging.getLogger("httpcore").setLevel(max(logging.INFO, logging.getLogger().level))
    run_service(_serve(settings))


if __name__ == "__main__":
    main()
