"""Loopback stand-ins for the services Sluice talks to (upstream providers), for tests."""
