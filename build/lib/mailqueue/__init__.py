"""mailqueue: asynchronous, multi-provider email for Django."""

__version__ = "0.1.0"
