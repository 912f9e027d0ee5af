"""The exported decoder on plain ONNX Runtime: one session, preallocated KV, IO binding.

The KV cache is one buffer per layer and kind, shaped `[max_batch, kv_heads, max_len, head_dim]`:
row `i` belongs to batch slot `i`. The graph's GroupQueryAttention shares past and present
buffers (`past_present_share_buffer`), so binding the same memory as input and output makes each
step write its new keys and values in place: a step never copies KV. Each row's length comes from
its attention-mask row, so rows of different lengths decode together (right padding), and a free
slot inside the batch is harmless (it decodes a dummy token at position 0 of its own row). The
one copy is deliberate: `copy_slot` gives the choices of an n > 1 request the prompt prefilled
once, row to row on the device (a strided CUDA copy on the GPU).

The session runs the export's last-position graph (`services.engine.graph`): logits come back for
one position per row, the one sampled, so a prefill does not compute the head for every prompt
position only to throw all but the last away.
"""

from __future__ import annotations

import ctypes
import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from services.engine.graph import LAST_INDEX, LAST_POSITION_GRAPH, LOGITS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraphSpec:
    """What the runtime needs from `genai_config.json`."""

    num_layers: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    key_name: str
    value_name: str
    present_key_name: str
    present_value_name: str
    filename: str

    @classmethod
    def from_folder(cls, folder: Path) -> GraphSpec:
        config = json.loads((folder / "genai_config.json").read_text())
        model = config["model"]
        dec = model["decoder"]
        eos = model["eos_token_id"]
        return cls(
            num_layers=int(dec["num_hidden_layers"]),
            kv_heads=int(dec["num_key_value_heads"]),
            head_dim=int(dec["head_size"]),
            vocab_size=int(model["vocab_size"]),
            context_length=int(model["context_length"]),
            eos_token_ids=tuple(eos) if isinstance(eos, list) else (int(eos),),
            pad_token_id=int(model.get("pad_token_id", 0)),
            key_name=dec["inputs"]["past_key_names"],
            value_name=dec["inputs"]["past_value_names"],
            present_key_name=dec["outputs"]["present_key_names"],
            present_value_name=dec["outputs"]["present_value_names"],
            filename=dec["filename"],
        )


@cache
def _cudart() -> ctypes.CDLL | None:
    """The CUDA runtime the CUDA provider loaded (a loaded library is found by its soname)."""
    for name in ("libcudart.so.12", "libcudart.so.13", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


_DEVICE_TO_DEVICE = 3  # cudaMemcpyDeviceToDevice


def choose_providers(prefer_cuda: bool = True) -> list[str]:
    available = ort.get_available_providers()
    if prefer_cuda and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class KVBuffer:
    """One preallocated KV tensor `[max_batch, kv_heads, max_len, head_dim]` on the session's
    device; a slot range is addressed by pointer, so binding a view never copies."""

    def __init__(self, shape: tuple[int, ...], dtype: type[np.generic], device: str) -> None:
        self.shape = shape
        self.dtype = dtype
        self.device = device
        self.row_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
        if device == "cpu":
            # np.zeros maps pages lazily: memory is committed only as sequences grow into it.
            self._host = np.zeros(shape, dtype)
            self.base = self._host.ctypes.data
        else:
            # Device memory, never copied to the host; positions past a row's mask are never
            # read, so the buffer needs no initialisation.
            self._device = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, device, 0)
            self.base = self._device.data_ptr()

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Copies the first `length` positions of every head of row `src` into row `dst`, on the
        buffer's own device."""
        if self.device == "cpu":
            self._host[dst, :, :length] = self._host[src, :, :length]
            return
        cudart = _cudart()
        if cudart is None:
            raise RuntimeError("no CUDA runtime library to copy KV rows with")
        heads, max_len, head_dim = self.shape[1:]
        item = np.dtype(self.dtype).itemsize
        pitch = max_len * head_dim * item  # one head's positions
        # One strided copy: `heads` runs of `length` positions, each `pitch` bytes apart.
        status = cudart.cudaMemcpy2D(
            ctypes.c_void_p(self.base + dst * self.row_bytes),
            ctypes.c_size_t(pitch),
            ctypes.c_void_p(self.base + src * self.row_bytes),
            ctypes.c_size_t(pitch),
            ctypes.c_size_t(length * head_dim * item),
            ctypes.c_size_t(heads),
            ctypes.c_int(_DEVICE_TO_DEVICE),
        )
        if status != 0:
            raise RuntimeError(f"cudaMemcpy2D failed with CUDA error {status}")

    def bind(self, binding: ort.IOBinding, names: tuple[str, str], start: int, rows: int) -> None:
        shape = [rows, *self.shape[1:]]
        ptr = self.base + start * self.row_bytes
        binding.bind_input(names[0], self.device, 0, self.dtype, shape, ptr)
        binding.bind_output(names[1], self.device, 0, self.dtype, shape, ptr)


class DecoderRuntime:
    """Runs prefill and batched decode steps over slots of a preallocated KV cache.

    On the CUDA provider the KV cache lives in device memory and is bound by pointer, exactly as on
    the CPU; only ids and the mask go to the device each step, and only logits come back.
    """

    def __init__(
        self,
        folder: Path,
        *,
        max_batch: int,
        max_len: int,
        threads: int = 0,
        providers: list[str] | None = None,
        strict_provider: bool = False,
        allow_spinning: bool = True,
    ) -> None:
        self.spec = GraphSpec.from_folder(folder)
        self.max_batch = max_batch
        self.max_len = min(max_len, self.spec.context_length)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        # Shapes change every step (mask width, batch); memory patterns would be rebuilt each
        # time for nothing.
        opts.enable_mem_pattern = False
        if not allow_spinning:
            # Spinning workers compete with the edge and gRPC threads on a small machine.
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if strict_provider:
            # Fail at load time if any node would silently run on the CPU instead.
            opts.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers = providers or choose_providers()
        # The engine's graph computes logits only where they are sampled (services.engine.graph);
        # a folder exported before it existed still runs, on the exported graph.
        graph = folder / LAST_POSITION_GRAPH
        if not graph.is_file():
            graph = folder / self.spec.filename
        self.session = ort.InferenceSession(str(graph), sess_options=opts, providers=providers)
        self.last_position = LAST_INDEX in {i.name for i in self.session.get_inputs()}
        self.provider = self.session.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"
        log.info(
            "execution provider: %s (available: %s)",
            self.provider,
            ", ".join(ort.get_available_providers()),
        )
        types = {i.name: i.type for i in self.session.get_inputs()}
        kv_type = types[self.spec.key_name % 0]
        self.kv_dtype: type[np.generic] = np.float16 if "float16" in kv_type else np.float32
        out_types = {o.name: o.type for o in self.session.get_outputs()}
        self.logits_dtype: type[np.generic] = (
            np.float16 if "float16" in out_types["logits"] else np.float32
        )
        shape = (max_batch, self.spec.kv_heads, self.max_len, self.spec.head_dim)
        self.keys = [
            KVBuffer(shape, self.kv_dtype, self.device) for _ in range(self.spec.num_layers)
        ]
        self.values = [
            KVBuffer(shape, self.kv_dtype, self.device) for _ in range(self.spec.num_layers)
        ]
        self._decode_logits = np.zeros((max_batch, 1, self.spec.vocab_size), self.logits_dtype)
        self._decode_index = np.zeros(max_batch, dtype=np.int64)  # a decode step's one position
        # One binding per batch width with the KV views, the decode position and the logits
        # buffer bound once: a decode step then rebinds only ids and mask.
        self._decode_bindings: dict[int, ort.IOBinding] = {}

    def _bind_kv(self, binding: ort.IOBinding, start: int, rows: int) -> None:
        spec = self.spec
        for layer in range(spec.num_layers):
            names_k = (spec.key_name % layer, spec.present_key_name % layer)
            names_v = (spec.value_name % layer, spec.present_value_name % layer)
            self.keys[layer].bind(binding, names_k, start, rows)
            self.values[layer].bind(binding, names_v, start, rows)

    def warmup(self, prefill_tokens: int) -> None:
        """Runs the largest shapes once so ONNX Runtime grows its arena before the first request.

        Otherwise the first burst of traffic pays for the allocations (seconds on a small CPU).
        """
        # Prefill computes logits for every position, so a full-budget warm-up costs seconds;
        # a modest width grows most of the arena.
        width = max(1, min(prefill_tokens, 128, self.max_len - 1))
        self.prefill(0, [np.zeros(width, dtype=np.int64)])
        rows = self.max_batch
        # Short rows: the activations grow to full batch width without touching (and so
        # committing) the KV pages of every slot.
        self.decode(np.zeros(rows, dtype=np.int64), np.ones(rows, dtype=np.int64))

    def prefill(self, start: int, prompts: list[np.ndarray], past: int = 0) -> np.ndarray:
        """Runs prompt tokens into slots `start .. start+len(prompts)-1`.

        Several prompts are right-padded into one batch (each row's mask gives its length, so
        padding changes no result); with `past > 0` a single prompt continues a chunked prefill
        after `past` positions already in its slot. Returns each row's last-position logits.
        """
        rows = len(prompts)
        width = max(len(p) for p in prompts)
        ids = np.full((rows, width), self.spec.pad_token_id, dtype=np.int64)
        mask = np.zeros((rows, past + width), dtype=np.int64)
        for i, prompt in enumerate(prompts):
            ids[i, : len(prompt)] = prompt
            mask[i, : past + len(prompt)] = 1
        last = np.array([len(p) - 1 for p in prompts], dtype=np.int64)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        if self.last_position:
            binding.bind_cpu_input(LAST_INDEX, last)
        self._bind_kv(binding, start, rows)
        positions = 1 if self.last_position else width
        logits = np.empty((rows, positions, self.spec.vocab_size), self.logits_dtype)
        binding.bind_output(
            LOGITS, "cpu", 0, self.logits_dtype, list(logits.shape), logits.ctypes.data
        )
        self.session.run_with_iobinding(binding)
        out: np.ndarray = logits[:, 0] if self.last_position else logits[np.arange(rows), last]
        return out

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Copies the first `length` KV positions of slot `src` into slot `dst`, every layer, on
        the device: choices of one prompt share its prefill this way."""
        if src == dst or length <= 0:
            return
        for buf in (*self.keys, *self.values):
            buf.copy_row(src, dst, length)
        if self.device != "cpu":
            # A device-to-device copy does not wait on the host; the next step must see it.
            cudart = _cudart()
            if cudart is not None and cudart.cudaDeviceSynchronize() != 0:
                raise RuntimeError("cudaDeviceSynchronize failed after copying KV rows")

    def decode(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """One decode step for slots `0..len(tokens)-1`.

        `lengths[i]` is how many positions row i already holds; its new token goes at that
        position. Returns logits `[rows, vocab]` (a view, valid until the next call).
        """
        rows = int(tokens.shape[0])
        width = int(lengths.max()) + 1
        ids = np.ascontiguousarray(tokens, dtype=np.int64).reshape(rows, 1)
        mask = (np.arange(width)[None, :] <= lengths[:, None]).astype(np.int64)
        out = self._decode_logits[:rows]
        binding = self._decode_bindings.get(rows)
        if binding is None:
            binding = self.session.io_binding()
            self._bind_kv(binding, 0, rows)
            if self.last_position:
                binding.bind_cpu_input(LAST_INDEX, self._decode_index[:rows])
            binding.bind_output(
                LOGITS, "cpu", 0, self.logits_dtype, list(out.shape), out.ctypes.data
            )
            self._decode_bindings[rows] = binding
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        self.session.run_with_iobinding(binding)
        return out[:, 0, :]
