"""What ``pip install /path/to/mailqueue`` installs: the code, and the templates and static files it renders."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_every_template_and_static_file(tmp_path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("mailqueue", "workers"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("mailqueue-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(path.relative_to(ROOT))
        for folder in ("templates", "static")
        for path in (ROOT / "mailqueue" / folder).rglob("*")
        if path.is_file()
    }
    assert wanted, "mailqueue has no templates or static files any more: update this test"
    assert wanted <= shipped, sorted(wanted - shipped)
    assert "mailqueue/metrics.py" in shipped and "workers/admission.py" in shipped
