"""wsgate: a WebSocket gateway for twistd that terminates WebSocket on both legs."""

__version__ = "0.1.0"

__all__ = ["__version__"]
