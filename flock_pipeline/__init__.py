"""FLock OFF pipeline: a decentralised data market for small language models, as a Dagster pipeline."""

__version__ = "0.1.0"
