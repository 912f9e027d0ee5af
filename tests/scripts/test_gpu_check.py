"""The CPU half of scripts/gpu_check.sh: the same code path the GPU check runs, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_half(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [
            str(ROOT / "scripts" / "gpu_check.sh"),
            "--cpu-only",
            "--out",
            str(out),
            "--tokens",
            "12",
            "--batches",
            "4",
        ],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["provider"] == "CPUExecutionProvider"
    assert "Paris" in result["greedy"]["text"]
    assert result["greedy"]["same_variant_on_cpu_prefix"] == 24
    assert result["copied_prefill_agrees"] is True
    assert result["single_stream"]["tokens"] == 12
    assert result["batch_4"]["tokens"] == 48
    assert result["batch_4"]["ttft_p50_ms"] > 0


def test_gpu_check_refuses_without_a_wheel() -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "usage" in done.stderr
