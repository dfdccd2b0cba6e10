"""movierec: vector-search movie recommendations over gRPC."""

__version__ = "0.1.0"
