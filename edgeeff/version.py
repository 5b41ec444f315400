"""edgeeff's version, in a module of its own: the CLI and the report read it from here, so nothing
inside the package imports the package itself (whose __init__ re-exports the API: docs/architecture.md)."""

__version__ = "0.1.0"
