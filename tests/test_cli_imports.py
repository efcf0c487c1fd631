"""Commands that need no model do not import TensorFlow (nor Ray, nor FAISS where they can).

Each case runs the CLI in a fresh Python process (an in-process check would see the modules other
tests imported) and reports which heavy modules that process ended up with.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_people_clusters import write_collection

HEAVY = ("tensorflow", "keras", "ray", "faiss")

_SCRIPT = """
import json, sys
from facenet_platform.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "heavy": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def _run(*argv: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_parser_imports_no_heavy_module():
    code = ("import sys; from facenet_platform.cli import build_parser; build_parser(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", [["--help"], ["index", "--help"], ["index", "cluster", "--help"],
                                  ["index", "build", "--help"], ["serve", "--help"],
                                  ["train", "--help"]])
def test_help_imports_no_heavy_module(argv):
    result = _run(*argv)
    assert result == {"code": 0, "heavy": []}


def test_index_cluster_runs_without_tensorflow_or_ray(tmp_path):
    index_dir = write_collection(tmp_path)[0]
    result = _run("index", "cluster", "--index", str(index_dir), "--no-sheets", "--json")
    assert result["code"] == 0
    assert result["heavy"] == ["faiss"]  # the k-NN graph; no model, no Ray
