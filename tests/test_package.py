"""The import package is facenet_platform and never shadows the stdlib `platform`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

CHECK = (
    "import sys; sys.path.insert(0, {root!r}); "
    "import platform; assert platform.system(), 'stdlib platform broken'; "
    "assert platform.__file__.endswith('platform.py'), platform.__file__; "
    "import facenet_platform, facenet_platform.cli, facenet_platform.core.model; "
    "print(platform.system(), list(facenet_platform.__path__))"
)


def _run(code: str, cwd: Path, extra_path: str | None = None) -> str:
    env = None
    if extra_path:
        import os

        env = {**os.environ, "PYTHONPATH": extra_path}
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_no_platform_init():
    assert not (REPO_ROOT / "platform" / "__init__.py").exists()


def test_installed_package_with_repo_root_first_on_path():
    """The environment the tests run in (installed as the README says, editable)."""
    out = _run(CHECK.format(root=str(REPO_ROOT)), cwd=REPO_ROOT)
    assert out.split()[0] in {"Linux", "Darwin", "Windows"}


@pytest.mark.slow
def test_regular_install_with_repo_root_first_on_path(tmp_path):
    """`pip install .` (not editable) into a target dir, then import with the repo root first."""
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--quiet", "--target", str(target), str(REPO_ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (target / "facenet_platform" / "cli.py").is_file()
    assert not (target / "facenet_platform" / "__init__.py").exists()
    # package data travels with a regular install: the serve page and the embedding mean
    assert (target / "facenet_platform" / "core" / "data" / "embedding_mean-20180408-102900.npy").is_file()
    code = CHECK.format(root=str(REPO_ROOT)) + f"; assert {str(target)!r} in facenet_platform.__path__[0]"
    # cwd elsewhere so that the editable install's finder is the only other way in
    out = _run(code, cwd=tmp_path, extra_path=str(target))
    assert str(target) in out


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "facenet_platform", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "verify" in proc.stdout and "embed" in proc.stdout
