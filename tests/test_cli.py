"""The facenet-platform command line: output, JSON, exit codes, bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bad_inputs import UNREADABLE, write_bad_inputs
from conftest import REPO_ROOT, requires_lfw


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut).save(d / "astronaut.jpg", quality=95)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(d / "mirrored.png")
    Image.fromarray(np.full((240, 320, 3), 127, np.uint8)).save(d / "blank.jpg")
    return d


@pytest.fixture(scope="module")
def cli(pipeline):
    """Run the CLI in-process (the pretrained model is already loaded by the `pipeline` fixture,
    so only the first call pays for TensorFlow)."""
    from facenet_platform.cli import main

    def run(capsys, *argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_verify_text_and_json(cli, capsys, photos):
    code, out, _ = cli(capsys, "verify", photos / "astronaut.jpg", photos / "mirrored.png")
    assert code == 0 and "same person" in out and "threshold" in out
    code, out, _ = cli(capsys, "verify", photos / "astronaut.jpg", photos / "mirrored.png", "--json")
    result = json.loads(out)
    assert code == 0
    assert result["same_person"] is True and 0 <= result["distance"] < result["threshold"]
    assert result["model_id"] == "facenet-20180408-102900"
    assert len(result["faces"]) == 2 and len(result["faces"][0]["box"]) == 4


def test_verify_threshold_override(cli, capsys, photos):
    code, out, _ = cli(capsys, "verify", photos / "astronaut.jpg", photos / "mirrored.png",
                       "--threshold", "0.0", "--json")
    assert code == 0 and json.loads(out)["same_person"] is False


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_verify_bad_input_is_one_line_and_exit_1(cli, capsys, photos, tmp_path, name):
    bad = write_bad_inputs(tmp_path)[name]
    code, out, err = cli(capsys, "verify", bad, photos / "astronaut.jpg")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("facenet-platform: error: ")
    assert bad.name in err and "Traceback" not in err


def test_verify_missing_file_and_no_face(cli, capsys, photos, tmp_path):
    code, _, err = cli(capsys, "verify", tmp_path / "nope.jpg", photos / "astronaut.jpg")
    assert code == 1 and "no such file" in err
    code, _, err = cli(capsys, "verify", photos / "blank.jpg", photos / "astronaut.jpg")
    assert code == 1 and "no face found" in err and "blank.jpg" in err


def test_embed_writes_one_row_per_face_and_reports_bad_files(cli, capsys, photos, tmp_path):
    bad = write_bad_inputs(tmp_path / "bad")
    out_file = tmp_path / "faces.parquet"
    code, out, err = cli(capsys, "embed", photos, bad["truncated"], bad["cmyk"], "-o", out_file)
    assert code == 1  # one file was skipped
    assert "truncated" in err and "skipped" in err
    table = pq.read_table(out_file)
    assert table.column_names == ["path", "face_index", "box", "landmarks", "score",
                                  "embedding", "model_id"]
    paths = table.column("path").to_pylist()
    assert sum("astronaut" in p for p in paths) == 1 and sum("mirrored" in p for p in paths) == 1
    assert not any("blank" in p for p in paths)
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    emb_type = table.schema.field("embedding").type
    assert emb.shape[1] == 512 and emb_type.list_size == 512 and emb_type.value_type == "float32"
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert "faces ->" in out


def test_weights_command(cli, capsys):
    code, out, _ = cli(capsys, "weights", "--json")
    info = json.loads(out)
    assert code == 0 and info["current"] and info["model_id"] == "facenet-20180408-102900"


def test_huge_image_is_refused_quickly(cli, capsys, photos, tmp_path):
    bad = write_bad_inputs(tmp_path)["huge_header"]
    code, _, err = cli(capsys, "verify", bad, photos / "astronaut.jpg")
    assert code == 1 and "exceeds the limit" in err


def test_usage_error_exit_2():
    proc = subprocess.run([sys.executable, "-m", "facenet_platform", "verify"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage" in proc.stderr


def test_subprocess_bad_input_has_no_traceback(photos, tmp_path):
    bad = write_bad_inputs(tmp_path)["text_as_jpg"]
    proc = subprocess.run([sys.executable, "-m", "facenet_platform", "verify", str(bad),
                           str(photos / "astronaut.jpg")], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("facenet-platform: error:")


@requires_lfw
def test_eval_lfw_json_on_a_small_pair_file(cli, capsys, lfw_root, tmp_path):
    """The CLI runs the protocol on a 2-fold, 40-pair file cut from View 2 and writes a ROC."""
    lines = (lfw_root / "pairs.txt").read_text().splitlines()
    body = lines[1:11] + lines[301:311] + lines[601:611] + lines[901:911]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2 10\n" + "\n".join(body) + "\n")
    roc = tmp_path / "roc.png"
    code, out, _ = cli(capsys, "eval", "lfw", "--lfw-dir", lfw_root, "--pairs", pairs,
                       "--json", "--roc", roc, "--flip")
    result = json.loads(out)
    assert code == 0 and result["n_pairs"] == 40 and result["n_folds"] == 2
    assert result["flip"] == "concat"
    assert {"accuracy", "accuracy_std", "val", "val_std", "auc", "eer", "threshold"} <= set(result)
    assert result["accuracy"] >= 0.8
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
