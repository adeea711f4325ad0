"""The spawner's version: the one source that the package metadata reads."""

__version__ = "0.2.0"
