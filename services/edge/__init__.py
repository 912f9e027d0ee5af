"""The HTTP edge: OpenAI JSON and SSE in, internal gRPC out."""
