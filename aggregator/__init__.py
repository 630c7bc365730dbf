"""Feed aggregator: polls the sources listed in feeds.yaml and republishes them merged per tag."""

__version__ = "0.1.0"
