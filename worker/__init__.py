"""processor: the worker daemon and processorctl."""

__version__ = "0.1.0"
