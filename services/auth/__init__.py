"""The auth service: organizations, projects, API keys and their policy, principals, and the
encrypted provider credentials of bring-your-own-key models."""
