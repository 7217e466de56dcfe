"""swarmnode: train one model together, with no central server and no pooled data."""

__version__ = "0.1.0"
__all__ = ["__version__"]
