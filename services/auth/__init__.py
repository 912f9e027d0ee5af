"""The auth service: organizations, API keys and principals."""
