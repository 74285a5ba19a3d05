"""ruff and mypy --strict run as part of the suite, on the code as it is installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
PACKAGES = {"lulayer": "lulayer", "layering": "lulayer/layering", "rpmdb": "lulayer/rpmdb", "apply": "lulayer/apply"}


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "lulayer", "layering", "rpmdb",
                           "apply", "fixtures", "tests"], cwd=TOP, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_the_package(tmp_path: Path) -> None:
    # mypy does not follow pyproject's package-dir mapping: lay the package out
    # as it installs (layering/ as lulayer/layering, ...) with symlinks.
    root = tmp_path / "src"
    for src, dest in PACKAGES.items():
        target = root / dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if src == "lulayer":
            target.mkdir()
            for f in (TOP / "lulayer").iterdir():
                if f.suffix in (".py", ".typed"):
                    (target / f.name).symlink_to(f)
        else:
            target.symlink_to(TOP / src, target_is_directory=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(TOP / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), "-p", "lulayer"],
        cwd=root, capture_output=True, text=True, env={"MYPYPATH": str(root), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
