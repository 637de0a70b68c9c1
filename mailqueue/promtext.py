"""The two text formats scrapers ask for, written for mailqueue's own metric families: the one place that leans
on prometheus_client's undocumented helpers.

prometheus_client's encoders escape every sample's name character by character and re-validate every label name of
every line: at 1,000,000 messages waiting in 10 queues over 5 providers, its OpenMetrics encoder took 31 ms of a
scrape against 14 ms here (bench/monitor_cost.py), beyond the 20 ms a scrape may cost. ``encode`` writes the same
bytes (tests/test_metrics.py compares them) for what mailqueue's families use: counters, gauges and histograms,
legacy names, no timestamps, exemplars or created samples. It needs two names prometheus_client does not document
(its Go-style number formatting, its name of the default escaping); with a release it was not written against, or
without them, ``writes`` answers None and prometheus_client's own encoders are used (tested).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable

from prometheus_client.metrics_core import Metric

#: prometheus_client releases (major, minor) whose output ``encode`` was compared with.
WRITTEN_FOR = ((0, 26), (0, 26))

_number: Callable[[float], str] | None
try:
    from prometheus_client import utils as client_utils
    from prometheus_client.openmetrics.exposition import UNDERSCORES

    _number = client_utils.floatToGoString
except (ImportError, AttributeError):  # moved or gone in this release: prometheus_client encodes
    UNDERSCORES, _number = "underscores", None


def _release() -> tuple[int, int]:
    major, minor, *_ = importlib.metadata.version("prometheus-client").split(".")
    return int(major), int(minor)


#: Whether this prometheus_client is one ``encode`` matches byte for byte.
AVAILABLE = _number is not None and WRITTEN_FOR[0] <= _release() <= WRITTEN_FOR[1]


def writes(content_type: str) -> bool | None:
    """For a content type prometheus_client negotiated: True (OpenMetrics 1.0.0) or False (Prometheus text) when
    ``encode`` writes it, None when prometheus_client's own encoder must."""
    if not AVAILABLE:
        return None
    media, *parameters = (part.strip() for part in content_type.split(";"))
    options = dict(parameter.partition("=")[::2] for parameter in parameters)
    if options.get("escaping", UNDERSCORES) != UNDERSCORES:
        return None
    if media == "text/plain":  # 0.0.4, or 1.0.0: the same text for legacy names
        return False
    if media == "application/openmetrics-text" and options.get("version") == "1.0.0":
        return True
    return None


def _escape(value: str) -> str:
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def encode(metrics: Iterable[Metric], *, openmetrics: bool) -> bytes:
    """Our families (counters, gauges, histograms; legacy names; no timestamps, exemplars or created) as text.

    The Prometheus text format 0.0.4 (``openmetrics=False``) or OpenMetrics 1.0.0, as prometheus_client's
    ``generate_latest`` of each writes them.
    """
    number = _number
    if number is None or not AVAILABLE:
        raise RuntimeError("mailqueue.promtext.encode() with a prometheus_client it was not written for")
    output: list[str] = []
    append = output.append
    for metric in metrics:
        name = metric.name
        if openmetrics:
            append(f"# HELP {name} {_escape(metric.documentation)}\n# TYPE {name} {metric.type}\n")
            if metric.unit:
                append(f"# UNIT {name} {metric.unit}\n")
        else:
            shown = f"{name}_total" if metric.type == "counter" else name
            documentation = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
            append(f"# HELP {shown} {documentation}\n# TYPE {shown} {metric.type}\n")
        for sample in metric.samples:
            if sample.labels:
                labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sorted(sample.labels.items()))
                append(f"{sample.name}{{{labels}}} {number(sample.value)}\n")
            else:
                append(f"{sample.name} {number(sample.value)}\n")
    if openmetrics:
        append("# EOF\n")
    return "".join(output).encode()
