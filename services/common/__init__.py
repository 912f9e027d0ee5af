"""Pieces every service shares: settings, the gRPC server runner, storage and domain errors."""
