"""hubless: hubness-aware embedding retrieval as a service."""

__version__ = "0.1.0"
