"""docs/prometheus-alerts.yml: valid rules, on metrics mailqueue exports, and the same as docs/operating.md shows.

PyYAML is not a dependency, so the rules file is written in a small block-style subset of YAML that
``load_subset`` reads; where PyYAML happens to be installed, its reading must be the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "docs" / "prometheus-alerts.yml"
OPERATING = ROOT / "docs" / "operating.md"
METRICS_MODULE = ROOT / "mailqueue" / "metrics.py"

DURATION = re.compile(r"\d+[smhdwy]")
SEVERITIES = {"critical", "warning"}
#: Prometheus' own series the rules may use besides mailqueue's.
PROMETHEUS_SERIES = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class SubsetError(ValueError):
    """The text uses YAML this reader does not know: the rules file must stay within the subset."""


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] == " "):
            return line[:index].rstrip()
    return line.rstrip()


def _scalar(text: str) -> Any:
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise SubsetError(f"unterminated single-quoted scalar: {text}")
        return text[1:-1].replace("''", "'")
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2 or "\\" in text:
            raise SubsetError(f"double-quoted scalar outside the subset: {text}")
        return text[1:-1]
    if text[0] in "{[&*!|>%@`":
        raise SubsetError(f"flow, anchor, tag or block scalar outside the subset: {text}")
    if ": " in text or text.endswith(":"):
        raise SubsetError(f"a plain scalar holding ': ' is ambiguous: {text}")
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def load_subset(text: str) -> Any:
    """Block mappings, block sequences of mappings, plain and quoted one-line scalars, and comments."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        if "\t" in raw:
            raise SubsetError("tabs")
        line = _strip_comment(raw)
        if line.strip():
            lines.append((len(line) - len(line.lstrip(" ")), line.strip()))

    def block(index: int, indent: int) -> tuple[Any, int]:
        if lines[index][1].startswith("- "):
            items: list[Any] = []
            while index < len(lines) and lines[index][0] == indent and lines[index][1].startswith("- "):
                lines[index] = (indent + 2, lines[index][1][2:])
                item, index = block(index, indent + 2)
                items.append(item)
            return items, index
        mapping: dict[str, Any] = {}
        while index < len(lines) and lines[index][0] == indent:
            line = lines[index][1]
            if line.startswith("- "):
                raise SubsetError(f"a sequence item among mapping keys: {line}")
            key, colon, rest = line.partition(":")
            if not colon or (rest and not rest.startswith(" ")) or not re.fullmatch(r"[A-Za-z_][\w-]*", key):
                raise SubsetError(f"not a 'key: value' line: {line}")
            if key in mapping:
                raise SubsetError(f"duplicate key {key!r}")
            if rest.strip():
                mapping[key] = _scalar(rest.strip())
                index += 1
            elif index + 1 < len(lines) and lines[index + 1][0] > indent:
                mapping[key], index = block(index + 1, lines[index + 1][0])
            else:
                raise SubsetError(f"a key without a value: {key}")
        if index < len(lines) and lines[index][0] > indent:
            raise SubsetError(f"unexpected indentation: {lines[index][1]}")
        return mapping, index

    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise SubsetError(f"text left after the document: {lines[end][1]}")
    return value


def rules() -> list[dict[str, Any]]:
    document = load_subset(RULES.read_text())
    assert list(document) == ["groups"]
    return [rule for group in document["groups"] for rule in group["rules"]]


def documented_metrics() -> set[str]:
    """The names in operating.md's table of metrics."""
    section = OPERATING.read_text().split("### The metrics\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(mailqueue_\w+)` \|", section, flags=re.MULTILINE))


def test_the_reader_knows_its_subset_and_refuses_the_rest() -> None:
    text = "a:\n  - b: 1\n    c: 'it''s # not a comment'  # a comment\n  - b: x{y=\"z\"} > 2\nd: plain text\n"
    assert load_subset(text) == {"a": [{"b": 1, "c": "it's # not a comment"}, {"b": 'x{y="z"} > 2'}], "d": "plain text"}
    for outside in ("a: {b: 1}\n", "a: |\n  text\n", "a: b: c\n", "a:\n  b: 1\n   c: 2\n", "a: 1\na: 2\n", "a:\n"):
        with pytest.raises(SubsetError):
            load_subset(outside)


def test_the_rules_file_is_yaml_prometheus_can_load() -> None:
    document = load_subset(RULES.read_text())
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the subset reader alone checked the file")
    assert yaml.safe_load(RULES.read_text()) == document


def test_every_rule_is_complete() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)), names
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"Mailqueue[A-Z]\w+", rule["alert"])
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "for" in rule:
            assert DURATION.fullmatch(rule["for"]), rule
        assert rule["labels"]["severity"] in SEVERITIES, rule
        assert set(rule["annotations"]) == {"summary", "description"}, rule
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), text


def test_every_expression_is_balanced_and_uses_exported_metrics() -> None:
    documented = documented_metrics()
    used: set[str] = set()
    for rule in rules():
        expr = rule["expr"]
        assert expr.count('"') % 2 == 0, expr
        for opening, closing in ("()", "{}", "[]"):
            depth = 0
            for char in re.sub(r'"[^"]*"', "", expr):
                depth += (char == opening) - (char == closing)
                assert depth >= 0, expr
            assert depth == 0, expr
        for name in re.findall(r"\bmailqueue_[a-z0-9_]+", expr):
            base = next((name[: -len(suffix)] for suffix in HISTOGRAM_SUFFIXES if name.endswith(suffix)), name)
            assert name in documented or base in documented, (name, rule["alert"])
            used.add(name)
        # Any other series (a name followed by its label matchers) must be one of Prometheus' own.
        for name in re.findall(r"\b([a-z_][a-z0-9_]*)\{", expr):
            assert name.startswith("mailqueue_") or name in PROMETHEUS_SERIES, (name, rule["alert"])
    # The brief's five concerns: waiting mail, dead letters, circuits, the outbox, the log writer.
    assert {
        "mailqueue_queue_oldest_enqueued_timestamp_seconds",
        "mailqueue_dead_letters",
        "mailqueue_circuit_open",
        "mailqueue_outbox_messages",
        "mailqueue_log_writer_lag_seconds",
    } <= used


def test_operating_md_shows_exactly_the_rules_file() -> None:
    operating = OPERATING.read_text()
    alerts = operating.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```\n", alerts, flags=re.DOTALL)
    assert blocks == [RULES.read_text()]
    for rule in rules():
        assert f"| `{rule['alert']}` |" in alerts, f"operating.md's table of alerts misses {rule['alert']}"


def exported_names(source: str) -> set[str]:
    """The metric names mailqueue/metrics.py builds families for, as a scrape shows them."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        kind = getattr(node.func, "id", getattr(node.func, "attr", ""))
        name = node.args[0].value
        if kind in {"GaugeMetricFamily", "HistogramMetricFamily"}:
            names.add(name)
        elif kind == "CounterMetricFamily":
            names.add(name if name.endswith("_total") else f"{name}_total")
    return names


def test_the_documented_metrics_are_the_exported_ones() -> None:
    exported = exported_names(METRICS_MODULE.read_text())
    assert exported, "no metric families found in mailqueue/metrics.py: has the way they are built changed?"
    assert documented_metrics() == exported
