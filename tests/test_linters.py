"""ruff and mypy --strict run as part of the suite, on the code as it is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "lulayer", "layering", "rpmdb",
                           "apply", "fixtures", "tests"], cwd=TOP, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_passes_on_the_installed_package(tmp_path: Path) -> None:
    # mypy does not follow pyproject's package-dir mapping (layering/ is lulayer.layering):
    # check the package as pip installs it, from a copy of the checkout's files (setuptools builds in
    # the source tree).
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=TOP,
                             check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, tracked):
        if (TOP / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(TOP / name, src / name)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True, capture_output=True)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(TOP / "pyproject.toml"), "--cache-dir",
         str(tmp_path / "cache"), "-p", "lulayer"],
        cwd=site, capture_output=True, text=True, env={"MYPYPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
