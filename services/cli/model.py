"""`sluice model export|list`: build and inspect the exported model folders."""

from __future__ import annotations

import argparse
import json
from typing import Any

from services.common.settings import Settings

MODEL_NAME = "smollm2-135m-instruct"


def register(sub: Any) -> None:
    parser = sub.add_parser("model", help="export and list hosted models")
    msub = parser.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    export = msub.add_parser("export", help="export the bundled model to ONNX (idempotent)")
    export.add_argument(
        "-e",
        "--execution-provider",
        choices=["cpu", "cuda"],
        default="cpu",
        help="target device (default: cpu)",
    )
    export.add_argument(
        "-p",
        "--precision",
        choices=["int4", "fp16"],
        default=None,
        help="weights precision (cpu: int4; cuda: fp16 by default, or int4)",
    )
    export.set_defaults(func=_export)
    listing = msub.add_parser("list", help="list exported model variants and digests")
    listing.set_defaults(func=_list)


def _export(args: argparse.Namespace, settings: Settings) -> int:
    # Imported here: the export module pulls in nothing heavy itself, but keeping the CLI's start
    # light matters for every other command.
    from services.engine.export import VARIANTS, export_model

    precision = args.precision or ("int4" if args.execution_provider == "cpu" else "fp16")
    variant = f"{args.execution_provider}-{precision}"
    if variant not in VARIANTS:
        print(f"error: no export variant {variant}; choose from {', '.join(VARIANTS)}")
        return 2
    folder = export_model(variant, settings.models_dir)
    print(folder)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    root = settings.models_dir / MODEL_NAME
    found = sorted(root.glob("*/manifest.json")) if root.exists() else []
    if not found:
        print(f"no exported models under {settings.models_dir}; run `sluice model export`")
        return 1
    print(f"{'MODEL':<24} {'VARIANT':<10} DIGEST")
    for path in found:
        manifest = json.loads(path.read_text())
        print(f"{manifest['name']:<24} {manifest['variant']:<10} {manifest['digest']}")
    return 0
