"""Bring-your-own-key upstream backends: models named "openai/<model>" and "anthropic/<model>",
served by the provider with the requesting organization's own credential."""
