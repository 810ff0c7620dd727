"""Reference chat backend: streams model tokens to browsers as SSE."""

__version__ = "1.0.0"
