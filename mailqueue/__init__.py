"""mailqueue: asynchronous, multi-provider email for Django."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``mailqueue.lookup``, imported on first use: it needs the models, which need Django set up.

    It lives in ``mailqueue.lookups``: a submodule named ``lookup`` would replace this
    function on the package as soon as anything imported it.
    """
    if name == "lookup":
        from .lookups import lookup  # noqa: PLC0415 - deferred until Django's apps are ready

        return lookup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
