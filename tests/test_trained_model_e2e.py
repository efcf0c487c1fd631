"""A trained model of its own, end to end: its spec decides the crop everywhere.

A tiny 64 px scratch network (``configs/scratch_lfw_softmax.yaml``, narrowed to seconds of
work, random weights: what is tested is the wiring, not accuracy) is saved as a training
checkpoint and exported to TFLite through ``train export``'s real path. Then, with that export
and real local Ray: ``index build --model`` (the Ray Data actors must cut 64 px crops: they once
cut the pretrained model's 160 px whatever the model), ``index enroll``, ``identify``,
``index search``, and the Serve application's ``/v1/identify`` and ``/healthz``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from serve_collection import free_port

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytest.importorskip("tensorflow")

pytestmark = pytest.mark.slow

INPUT_SIZE = 64
EMBEDDING_SIZE = 32
THRESHOLD = 1.0  # the "validation threshold" of the checkpoint's last epoch


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("photos")
    (root / "collection" / "sub").mkdir(parents=True)
    (root / "gallery" / "astronaut").mkdir(parents=True)
    Image.fromarray(astronaut).save(root / "collection" / "astronaut.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(
        root / "collection" / "sub" / "mirrored.png")
    Image.fromarray(np.full((120, 160, 3), 127, np.uint8)).save(root / "collection" / "blank.png")
    Image.fromarray(astronaut).save(root / "gallery" / "astronaut" / "1.jpg", quality=92)
    return {"collection": root / "collection", "gallery": root / "gallery",
            "probe": root / "collection" / "astronaut.jpg", "faces": root / "gallery" / "astronaut"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, photos) -> Path:
    """A checkpoint of the tiny scratch network, exported to TFLite by ``export_checkpoint``."""
    from facenet_platform.train.config import load_config
    from facenet_platform.train.export import export_checkpoint
    from facenet_platform.train.loop import build_optimizer, save_checkpoint
    from facenet_platform.train.models import build_model

    root = tmp_path_factory.mktemp("model")
    cfg = load_config(REPO_ROOT / "configs" / "scratch_lfw_softmax.yaml", overrides=[
        ("model.input_size", INPUT_SIZE), ("model.embedding_size", EMBEDDING_SIZE),
        ("model.width", 0.125), ("model.repeats", [1, 1, 1]),
        ("data.root", str(photos["faces"])), ("scaling.num_workers", 1)])
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg, steps_per_epoch=1)
    optimizer.build(model.trainable_variables)
    checkpoint = root / "checkpoint_000001"
    save_checkpoint(checkpoint, cfg, model, optimizer, None, None, {
        "epoch": 1, "step": 1, "history": [{"epoch": 1, "val_threshold": THRESHOLD}],
        "steps": []})
    out = root / "scratch64.tflite"
    report = export_checkpoint(checkpoint, "tflite", out, images=photos["faces"], num_images=1)
    assert report["input_size"] == INPUT_SIZE and report["difference"]["l2_max"] < 1e-3
    return out


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def run_cli(capsys, *argv) -> tuple[int, str]:
    from facenet_platform.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out


def last_json(out: str):
    """The JSON document a ``--json`` command printed (Ray may print warnings before it)."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith(("{", "[")))
    return json.loads("\n".join(lines[start:]))


def test_spec_of_the_export(exported):
    from facenet_platform.core.factory import resolve_spec

    spec = resolve_spec(exported)
    assert (spec.model_id, spec.input_size, spec.embedding_size) == (
        "scratch64.tflite", INPUT_SIZE, EMBEDDING_SIZE)
    assert spec.standardization == "prewhiten"  # from scratch: the config's default
    assert spec.threshold == THRESHOLD and spec.identify_threshold is None
    assert spec.source.kind == "exported" and spec.source.format == "tflite"
    assert spec.source.checkpoint.endswith("checkpoint_000001") and len(spec.source.sha256) == 64


def test_index_enroll_identify_search_and_serve(exported, photos, local_ray, tmp_path, capsys):
    from facenet_platform.core.factory import resolve_spec
    from facenet_platform.index.collection import read_faces, read_failures
    from facenet_platform.index.gallery import Gallery
    from facenet_platform.index.layout import IndexLayout, read_manifest

    spec = resolve_spec(exported)
    index = tmp_path / "index"

    # index build: every actor crops and embeds as the model's spec says
    code, out = run_cli(capsys, "index", "build", photos["collection"], "--out", index,
                        "--model", exported, "--no-progress", "--json")
    summary = last_json(out)
    assert code == 0 and summary["failures"] == 0, (summary, read_failures(index).to_pylist())
    assert summary["faces"] == 2 and summary["files_no_face"] == 1
    assert summary["model_id"] == spec.model_id
    faces = read_faces(index, columns=["embedding", "model_id"])
    assert faces.schema.field("embedding").type.list_size == EMBEDDING_SIZE
    assert set(faces.column("model_id").to_pylist()) == {spec.model_id}
    assert read_manifest(IndexLayout.open(index))["collection"]["model"] == spec.to_metadata()

    # enroll a gallery with the same model: the gallery records its spec
    code, out = run_cli(capsys, "index", "enroll", photos["gallery"], "--index", index,
                        "--model", exported)
    assert code == 0 and "enrolled 1 faces of 1 people" in out
    gallery = Gallery.load(index)
    assert gallery.spec == spec and gallery.embedding_size == EMBEDDING_SIZE
    assert gallery.threshold == THRESHOLD

    # identify with the model: the same photo is its enrolled person
    code, out = run_cli(capsys, "identify", photos["probe"], "--index", index,
                        "--model", exported, "--json")
    (result,) = last_json(out)
    (face,) = result["faces"]
    assert code == 0 and face["decision"] == "astronaut" and face["matches"][0]["distance"] < 1e-3
    assert list(face)[:3] == ["box", "score", "landmarks"]
    # ... while the pretrained model's pipeline, or this model with another crop, is refused
    from facenet_platform.core.weights import PRETRAINED
    from facenet_platform.index.gallery import GalleryError

    with pytest.raises(GalleryError, match="model"):
        gallery.check_model(PRETRAINED)
    with pytest.raises(GalleryError, match="alignment"):
        gallery.check_model(spec.with_crop("similarity"))

    # bulk search of the collection against the gallery (Ray actors)
    matches_file = tmp_path / "matches.parquet"
    code, out = run_cli(capsys, "index", "search", "--index", index, "-o", matches_file,
                        "--actors", "1", "--no-progress", "--json")
    searched = last_json(out)
    assert code == 0 and searched["faces"] == 2 and searched["matched"] >= 1
    import pyarrow.parquet as pq

    matches = pq.read_table(matches_file).to_pylist()
    # one row per collection face; a face the people do not name has an empty name
    assert {m["name"] for m in matches if m["name"]} == {"astronaut"}

    # Serve with that model: the detector cuts the model's crops, /v1/identify names the face
    from ray import serve

    from facenet_platform.serve.app import app_args, build_app
    from facenet_platform.serve.auth import READ_KEY_ENV

    read_key = "trained-model-e2e-read-key"
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(app_args(str(index), model=str(exported), max_batch_size=2,
                                     ingress={"env": {READ_KEY_ENV: read_key}})),
                  name="facenet-trained", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        health = requests.get(url + "/healthz", timeout=60)
        assert health.status_code == 200 and health.json()["model_id"] == spec.model_id, health.text
        with open(photos["probe"], "rb") as fh:
            response = requests.post(url + "/v1/identify", files={"file": ("a.jpg", fh.read())},
                                     headers={"Authorization": f"Bearer {read_key}"}, timeout=120)
        assert response.status_code == 200, response.text
        body = response.json()
        (served,) = body["faces"]
        assert served["decision"] == "astronaut" and served["matches"][0]["distance"] < 1e-3
        assert served["box"] == face["box"]  # the same detector and crop as the CLI
    finally:
        serve.shutdown()
