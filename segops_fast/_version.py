"""The package version, in one place so that the transport's User-Agent and packaging agree."""

__version__ = "0.1.0"
