"""sfhq-factory client: SDK, CLI and the generated gRPC stubs (no torch here)."""

__version__ = "0.1.0"
