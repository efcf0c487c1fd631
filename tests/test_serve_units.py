"""Parts of the Serve application that need no Ray cluster: upload parsing, settings and the
Serve config YAML, and the gallery writer's serialisation and crash safety."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from facenet_platform.core.errors import ConfigError
from facenet_platform.serve import uploads
from facenet_platform.serve.config import (
    AppArgs,
    apply_cli_scaling,
    parse_role_values,
    serve_config,
    serve_config_yaml,
)

from conftest import REPO_ROOT

# -- exception -> HTTP status ---------------------------------------------------------------------


@pytest.mark.parametrize("exc, status, code", [
    ("BodyTooLarge", 413, "body_too_large"),
    ("ImageTooLargeError", 413, "image_too_large"),  # before its base ImageError
    ("BadUpload", 400, "bad_upload"),
    ("ImageError", 400, "bad_image"),
    ("NoFaceFoundError", 422, "no_face"),
    ("UnknownIdentityError", 404, "unknown_identity"),  # before its base GalleryError
    ("GalleryError", 503, "gallery_unavailable"),
    ("ConfigError", 400, "bad_request"),
])
def test_one_error_table_for_ingress_and_deployments(exc, status, code):
    from facenet_platform.core import errors
    from facenet_platform.index import gallery
    from facenet_platform.serve.http_errors import Failure, failure_for, http_status

    cls = next(getattr(m, exc) for m in (errors, gallery, uploads) if hasattr(m, exc))
    assert http_status(cls("why")) == (status, code)
    assert failure_for(cls("why")) == Failure(status, code, str(cls("why")))


def test_unknown_errors_are_internal():
    from facenet_platform.serve.http_errors import failure_for, http_status

    assert http_status(RuntimeError("boom")) is None
    with pytest.raises(TypeError):
        failure_for(RuntimeError("boom"))


# -- uploads -------------------------------------------------------------------------------------


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "XyZ-boundary-42"):
    out = b""
    for name, filename, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return f"multipart/form-data; boundary={boundary}", out


def test_multipart_binary_payloads_survive():
    # Payloads with CRLFs, dashes and a near-boundary must come back byte for byte.
    tricky = b"\r\n--XyZ-boundary-4\r\n\x00\xff" * 50 + bytes(range(256))
    ctype, body = multipart([("file1", "a.jpg", tricky), ("file2", "b b.png", b""),
                             ("note", None, b"hello")])
    parts = uploads.parse_multipart(body, ctype)
    assert [(p.name, p.filename, p.data) for p in parts] == [
        ("file1", "a.jpg", tricky), ("file2", "b b.png", b""), ("note", None, b"hello")]
    assert uploads.named_uploads(ctype, body, ("file2", "file1")) == [
        ("upload 'b b.png'", b""), ("upload 'a.jpg'", tricky)]


def test_single_upload_prefers_file_field_then_raw_body():
    ctype, body = multipart([("other", "x.jpg", b"X"), ("file", "y.jpg", b"Y")])
    assert uploads.single_upload(ctype, body) == ("upload 'y.jpg'", b"Y")
    ctype, body = multipart([("picture", "x.jpg", b"X")])  # the only file, whatever its name
    assert uploads.single_upload(ctype, body) == ("upload 'x.jpg'", b"X")
    assert uploads.single_upload("image/jpeg", b"RAW") == ("request body", b"RAW")
    assert uploads.single_upload(None, b"RAW") == ("request body", b"RAW")
    ctype, body = multipart([("file", "a.jpg", b"A"), ("file", "b.jpg", b"B")])
    assert uploads.all_uploads(ctype, body) == [("upload 'a.jpg'", b"A"), ("upload 'b.jpg'", b"B")]


@pytest.mark.parametrize("ctype, body, message", [
    ("multipart/form-data", b"--x\r\n\r\n", "boundary"),
    ("multipart/form-data; boundary=abc", b"no delimiter here", "does not contain"),
    ("multipart/form-data; boundary=abc",
     b'--abc\r\nContent-Disposition: form-data; name="file"\r\n\r\ndata without end', "ends before"),
    ("multipart/form-data; boundary=abc", b"--abc\r\nContent-Type: image/png\r\n\r\nx\r\n--abc--",
     "Content-Disposition"),
    ("application/x-www-form-urlencoded", b"a=1", "multipart/form-data"),
])
def test_bad_multipart_is_a_bad_upload(ctype, body, message):
    with pytest.raises(uploads.BadUpload, match=message):
        uploads.single_upload(ctype, body)


def test_named_uploads_need_every_field():
    ctype, body = multipart([("file1", "a.jpg", b"A")])
    with pytest.raises(uploads.BadUpload, match="file2"):
        uploads.named_uploads(ctype, body, ("file1", "file2"))
    with pytest.raises(uploads.BadUpload, match="multipart"):
        uploads.named_uploads("image/jpeg", b"A", ("file1", "file2"))


def test_read_body_limits():
    async def chunks(n, size):
        for _ in range(n):
            yield b"x" * size

    run = asyncio.run
    assert run(uploads.read_body(None, chunks(3, 10), 30)) == b"x" * 30
    with pytest.raises(uploads.BodyTooLarge):
        run(uploads.read_body(None, chunks(4, 10), 30))  # no Content-Length: counted
    with pytest.raises(uploads.BodyTooLarge, match="1,000,000"):
        run(uploads.read_body("1000000", chunks(1, 1), 30))  # declared: refused before reading
    with pytest.raises(uploads.BadUpload):
        run(uploads.read_body("lots", chunks(1, 1), 30))


# -- settings and the Serve config -----------------------------------------------------------------


def test_role_specs():
    assert parse_role_values("2", "replicas", allow_range=True) == {
        "detector": 2, "embedder": 2, "searcher": 2}
    assert parse_role_values("detector=2, embedder=1:4", "replicas", allow_range=True) == {
        "detector": 2, "embedder": (1, 4)}
    assert parse_role_values("embedder=0.5", "cpus") == {"embedder": 0.5}
    for bad in ("writer=2", "detector=two", "detector=0", "2,embedder=3", "embedder=3:1"):
        with pytest.raises(ConfigError):
            parse_role_values(bad, "replicas", allow_range=True)


def test_scaling_options_reach_serve_options(tmp_path):
    args = apply_cli_scaling(AppArgs(index_dir=str(tmp_path), max_batch_size=8),
                             "detector=3,embedder=1:4", "embedder=2", "embedder=1")
    options = args.serve_options()
    assert options["Detector"]["num_replicas"] == 3
    assert "num_replicas" not in options["Embedder"]
    assert options["Embedder"]["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 4}
    assert options["Embedder"]["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}
    assert options["Embedder"]["max_ongoing_requests"] >= 2 * 8  # room to fill a batch
    assert options["GalleryWriter"]["num_replicas"] == 1
    assert args.buckets() == [1, 4, 8]
    assert AppArgs(index_dir="x", max_batch_size=1).buckets() == [1]
    assert args.embedder.thread_count() == 2


def test_serve_config_is_valid_for_ray_and_builds(tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from facenet_platform.serve.app import build_app

    args = apply_cli_scaling(AppArgs(index_dir=str(tmp_path / "idx"), max_batch_size=8),
                             "embedder=1:3", None, None)
    text = serve_config_yaml(args, port=8123)
    assert "FACENET_ADMIN_KEY" in text and "read_key_sha256" in text  # how to set keys...
    config = yaml.safe_load(text)
    ServeDeploySchema.model_validate(config)  # what `serve deploy` and KubeRay accept
    app = config["applications"][0]
    assert app["import_path"] == "facenet_platform.serve.app:build_app"
    assert app["args"] == {"index_dir": str(tmp_path / "idx"), "max_batch_size": 8}
    names = [d["name"] for d in app["deployments"]]
    assert names == ["FaceAPI", "Detector", "Embedder", "Searcher", "Thumbnailer", "PeopleReader",
                     "GalleryWriter"]
    # Serve validates `args:` into the builder's pydantic annotation; a plain dict works too.
    built = build_app(AppArgs.model_validate(app["args"]))
    assert type(built).__name__ == "Application"
    assert type(build_app(dict(app["args"]))).__name__ == "Application"


def test_shipped_serve_config_matches_the_generator():
    shipped = yaml.safe_load((REPO_ROOT / "platform" / "serve" / "serve_config.yaml").read_text())
    app = shipped["applications"][0]
    generated = serve_config(AppArgs.model_validate(app["args"]))
    assert shipped == generated


def test_cli_serve_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "facenet_platform", "serve-config", "--index", str(tmp_path),
         "--replicas", "detector=2", "--cpus", "embedder=2", "--port", "9000"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    assert config["http_options"]["port"] == 9000
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    assert deployments["Detector"]["num_replicas"] == 2
    assert deployments["Embedder"]["ray_actor_options"]["num_cpus"] == 2.0
    proc = subprocess.run(
        [sys.executable, "-m", "facenet_platform", "serve-config", "--index", str(tmp_path),
         "--replicas", "writer=2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "unknown deployment 'writer'" in proc.stderr


# -- the gallery writer ----------------------------------------------------------------------------


def unit_rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 512)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_writer_serialises_concurrent_enrollments(tmp_path):
    from facenet_platform.index.gallery import Gallery
    from facenet_platform.serve.deployments import GalleryWriterImpl, WriteResult

    writer = GalleryWriterImpl(str(tmp_path / "idx"))

    async def enroll_all():
        return await asyncio.gather(*(
            writer.add(f"person_{i}", unit_rows(2, i), [f"p{i}a", f"p{i}b"], [f"h{i}a", f"h{i}b"])
            for i in range(8)))

    results = asyncio.run(enroll_all())
    assert all(isinstance(r, WriteResult) and r.added == 2 for r in results)
    assert sorted(r.version for r in results) == list(range(1, 9))
    gallery = Gallery.load(tmp_path / "idx")
    assert gallery.version == 8
    assert gallery.identities() == {f"person_{i}": 2 for i in range(8)}
    # the same photos again: nothing added, no new version
    again = writer.add_sync("person_0", unit_rows(2, 0), ["p0a", "p0b"], ["h0a", "h0b"])
    assert (again.added, again.already_enrolled, again.version) == (0, 2, 8)
    # another writer (the CLI) saves in between: the next change starts from its version
    other = Gallery.load(tmp_path / "idx")
    other.add("outsider", unit_rows(1, 99))
    other.save()
    result = writer.add_sync("person_9", unit_rows(1, 9), ["p9"], ["h9"])
    assert result.version == 10 and result.identities == 10
    assert writer.remove_sync("nobody").status == 404
    assert writer.add_sync("unknown", unit_rows(1, 5), ["x"], ["hx"]).status == 400
    from facenet_platform.core.weights import PRETRAINED

    other_model = PRETRAINED.replace(model_id="other-model").to_metadata()  # the served spec
    mismatch = writer.add_sync("p", unit_rows(1, 5), ["x"], ["hx"], other_model)
    assert mismatch.status == 409 and mismatch.code == "model_mismatch"
    # a gallery without a recorded spec records the served one with its next change
    assert writer.add_sync("p", unit_rows(1, 5), ["x"], ["hx"], PRETRAINED.to_metadata()).added
    assert Gallery.load(tmp_path / "idx").spec == PRETRAINED
    other_crop = PRETRAINED.with_crop(margin=44).to_metadata()  # same model, another crop
    refused = writer.add_sync("q", unit_rows(1, 6), ["y"], ["hy"], other_crop)
    assert refused.status == 409 and "margin" in refused.message


def test_writer_crash_during_save_keeps_the_last_good_version(tmp_path, monkeypatch):
    import facenet_platform.index.gallery as gallery_module
    from facenet_platform.index.gallery import Gallery
    from facenet_platform.serve.deployments import GalleryWriterImpl

    writer = GalleryWriterImpl(str(tmp_path / "idx"))
    assert writer.add_sync("alice", unit_rows(2, 1), ["a1", "a2"], ["ha1", "ha2"]).version == 1

    def crash(*args, **kwargs):  # the process dies after the data files, before the manifest
        raise OSError("killed during the save")

    monkeypatch.setattr(gallery_module, "update_manifest", crash)
    with pytest.raises(OSError):
        writer.add_sync("bob", unit_rows(1, 2), ["b1"], ["hb1"])
    monkeypatch.undo()

    survivor = Gallery.load(tmp_path / "idx")
    assert survivor.version == 1 and survivor.identities() == {"alice": 2}
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["gallery"]["version"] == 1
    # the writer did not keep the half-applied change: the next one starts from version 1
    result = writer.add_sync("carol", unit_rows(1, 3), ["c1"], ["hc1"])
    assert result.version == 2
    assert Gallery.load(tmp_path / "idx").identities() == {"alice": 2, "carol": 1}
