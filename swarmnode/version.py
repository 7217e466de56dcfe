"""The package version in a module of its own at the bottom of the layers, so that p2p (which
reports it in Info replies) need not import the package facade above it."""

__version__ = "0.1.0"
