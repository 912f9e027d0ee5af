"""`make bench`: throughput, latency and gateway cost of the whole stack, beside onnxruntime-genai.

Run from the repository root as `python -m bench.run` (`--quick` for a short development run).
"""
