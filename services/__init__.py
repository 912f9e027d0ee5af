"""Sluice: an OpenAI-compatible inference platform split into gRPC services behind an HTTP edge."""
