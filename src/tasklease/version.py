"""The package version, importable without the public API (which imports the client)."""

__version__ = "0.1.0"
