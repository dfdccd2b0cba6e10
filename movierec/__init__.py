"""movierec: vector-search movie recommendations over gRPC."""

__version__ = "0.2.0"
