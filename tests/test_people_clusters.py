"""People clustering: metrics, clusterers on planted clusters, the index command (incremental)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bad_inputs import write_good_image

from facenet_platform.core.errors import ConfigError, DatasetError
from facenet_platform.index import people_clusters as cl
from facenet_platform.index.layout import IndexLayout, read_manifest

D = 512


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# metrics on a hand-checked toy example
# ---------------------------------------------------------------------------------------------
#
# faces      0  1  2  3  4  5
# person     X  X  X  Y  Y  Z
# cluster    A  A  B  B  B  -1 (unassigned: a singleton)
#
# pairs put together: A {01}, B {23, 24, 34} -> 4; same-person pairs: X {01, 02, 12}, Y {34} -> 4;
# both: 01, 34 -> 2. Pairwise P = 2/4, R = 2/4, F1 = 1/2.
# BCubed per face (precision, recall): 0 (2/2, 2/3), 1 (2/2, 2/3), 2 (1/3, 1/3), 3 (2/3, 2/2),
# 4 (2/3, 2/2), 5 (1/1, 1/1); P = (1 + 1 + 1/3 + 2/3 + 2/3 + 1)/6 = 7/9, R = 7/9, F = 7/9.

TRUE = ["X", "X", "X", "Y", "Y", "Z"]
PRED = [0, 0, 1, 1, 1, -1]


def test_pairwise_scores_toy():
    s = cl.pairwise_scores(TRUE, PRED)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((0.5, 0.5, 0.5))
    assert (s["pred_pairs"], s["true_pairs"], s["true_positive_pairs"]) == (4, 4, 2)


def test_bcubed_scores_toy():
    s = cl.bcubed_scores(TRUE, PRED)
    assert (s["precision"], s["recall"], s["f"]) == pytest.approx((7 / 9, 7 / 9, 7 / 9))


def test_metric_extremes():
    perfect = cl.pairwise_scores(TRUE, [5, 5, 5, 9, 9, 2])
    assert perfect["f1"] == 1.0 and cl.bcubed_scores(TRUE, [5, 5, 5, 9, 9, 2])["f"] == 1.0
    alone = cl.pairwise_scores(TRUE, [-1] * 6)  # nothing claimed: precision 1, recall 0
    assert (alone["precision"], alone["recall"], alone["f1"]) == (1.0, 0.0, 0.0)
    b = cl.bcubed_scores(TRUE, [-1] * 6)
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx((1/3 * 3 + 1/2 * 2 + 1) / 6)
    merged = cl.bcubed_scores(TRUE, [0] * 6)
    assert merged["recall"] == 1.0 and merged["precision"] == pytest.approx((3 * 3/6 + 2 * 2/6 + 1/6) / 6)
    with pytest.raises(ConfigError):
        cl.pairwise_scores([0, 1], [0])


def test_finalize_labels_drops_small_groups_and_orders_by_size():
    labels = cl.finalize_labels(np.array([7, 7, 3, 3, 3, 9, -1, 4, 4]), min_faces=2)
    assert labels.tolist() == [1, 1, 0, 0, 0, -1, -1, 2, 2]


# ---------------------------------------------------------------------------------------------
# clustering synthetic embeddings
# ---------------------------------------------------------------------------------------------

def planted(n_people=15, seed=0, noise=0.55):
    """People: unit centres, 3-12 faces each at ~0.5 squared L2 from one another; plus 25
    unrelated faces (noise), labelled -1."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(n_people, D)))
    sizes = rng.integers(3, 13, n_people)
    x = np.concatenate([unit(c + noise / np.sqrt(D) * rng.normal(size=(s, D)))
                        for c, s in zip(centres, sizes)])
    y = np.repeat(np.arange(n_people), sizes)
    noise_faces = unit(rng.normal(size=(25, D)))
    return np.concatenate([x, noise_faces]), np.concatenate([y, np.full(25, -1)]), centres


@pytest.mark.parametrize("algorithm", sorted(cl.CLUSTERERS))
def test_clustering_recovers_planted_people_and_leaves_noise(algorithm):
    x, y, _ = planted()
    labels = cl.cluster_embeddings(x, algorithm=algorithm, max_distance=0.9, min_faces=2)
    people = y >= 0
    assert np.all(labels[~people] == -1)  # noise stays unassigned
    assert len(set(labels[people])) == 15 and np.all(labels[people] >= 0)
    truth = np.where(people, y, -1 - np.arange(len(y)))
    assert cl.pairwise_scores(truth, labels)["f1"] == 1.0
    # cluster 0 is the largest
    sizes = np.bincount(labels[labels >= 0])
    assert sizes[0] == sizes.max()


def test_min_faces_and_knn_graph():
    x, y, _ = planted(n_people=4, seed=3)
    big = np.bincount(y[y >= 0]).max()
    labels = cl.cluster_embeddings(x, min_faces=big + 1)
    assert np.all(labels == -1)
    graph = cl.knn_graph(x, k=5)
    assert graph.neighbors.shape == (len(x), 5)
    assert not np.any(graph.neighbors == np.arange(len(x))[:, None])  # no self loops
    assert np.all(np.diff(graph.distances, axis=1) >= -1e-5)
    assert cl.cluster_embeddings(np.zeros((0, D), np.float32)).shape == (0,)
    with pytest.raises(ConfigError):
        cl.cluster_embeddings(x, max_distance=0)
    with pytest.raises(ConfigError):
        cl.cluster_embeddings(x, algorithm="kmeans")


# ---------------------------------------------------------------------------------------------
# index cluster: table, contact sheets, manifest, incremental
# ---------------------------------------------------------------------------------------------

def faces_table(paths, embeddings, start=0):
    """Rows with the columns `index build` writes (one face per photo)."""
    n = len(paths)

    def fixed(values, size):
        return pa.FixedSizeListArray.from_arrays(
            pa.array(np.asarray(values, np.float32).reshape(-1), pa.float32()), size)

    return pa.table({
        "path": pa.array([str(p) for p in paths], pa.string()),
        "content_hash": pa.array([f"hash{start + i:05d}" for i in range(n)], pa.string()),
        "width": pa.array([160] * n, pa.int32()),
        "height": pa.array([200] * n, pa.int32()),
        "face_index": pa.array([0] * n, pa.int32()),
        "box": fixed(np.tile([45, 40, 115, 130], (n, 1)), 4),
        "landmarks": fixed(np.zeros((n, 10)), 10),
        "score": pa.array([0.99] * n, pa.float32()),
        "quality": pa.array([1.0] * n, pa.float32()),
        "embedding": fixed(embeddings, D),
        "model_id": pa.array(["facenet-20180408-102900"] * n, pa.string()),
        "indexed_at": pa.array([0] * n, pa.timestamp("s", tz="UTC")),
    })


def write_collection(tmp_path):
    """An index directory holding only a faces table of 5 planted people (one photo file):
    ``(index_dir, x, y, centres, photo)``."""
    x, y, centres = planted(n_people=5, seed=11)
    photo = write_good_image(tmp_path / "photo.jpg")
    index_dir = tmp_path / "idx"
    (index_dir / "faces").mkdir(parents=True)
    pq.write_table(faces_table([photo] * len(x), x), index_dir / "faces" / "part-00000.parquet")
    return index_dir, x, y, centres, photo


@pytest.fixture()
def collection(tmp_path):
    return write_collection(tmp_path)


def read_clusters(index_dir):
    return pq.read_table(index_dir / "clusters" / "clusters.parquet")


def test_cluster_index_writes_table_sheets_and_manifest(collection):
    index_dir, x, y, _, _ = collection
    summary = cl.cluster_index(index_dir, max_thumbnails=4)
    assert summary.mode == "full" and summary.n_clusters == 5
    assert summary.assigned == int((y >= 0).sum()) and summary.unassigned == 25
    table = read_clusters(index_dir)
    assert table.schema.names == ["content_hash", "face_index", "path", "cluster_id"]
    labels = table.column("cluster_id").to_numpy()
    assert np.all(labels[y < 0] == -1)
    sheets = sorted((index_dir / "clusters" / "sheets").glob("cluster-*.png"))
    assert [p.name for p in sheets] == [f"cluster-{c:05d}.png" for c in range(5)]
    from PIL import Image

    with Image.open(sheets[0]) as sheet:  # 4 thumbnails on a 2x2 grid under a title
        assert sheet.size == (4 + 2 * (cl.THUMBNAIL_SIZE + 4), 20 + 2 * (cl.THUMBNAIL_SIZE + 4) + 4)
    section = read_manifest(IndexLayout.open(index_dir))["clusters"]
    assert section["n_clusters"] == 5 and section["unassigned"] == 25
    assert section["params"]["algorithm"] == cl.DEFAULT_ALGORITHM
    assert section["params"]["model_id"] == "facenet-20180408-102900"
    assert "updated_at" in section


def test_incremental_join_new_cluster_and_recluster(collection):
    index_dir, x, y, centres, photo = collection
    cl.cluster_index(index_dir, sheets=False)
    before = read_clusters(index_dir).column("cluster_id").to_numpy()
    rng = np.random.default_rng(5)
    person = y[0]
    joining = unit(centres[person] + 0.55 / np.sqrt(D) * rng.normal(size=(2, D)))
    newcomer = unit(rng.normal(size=D))
    new_group = unit(newcomer + 0.5 / np.sqrt(D) * rng.normal(size=(3, D)))
    stranger = unit(rng.normal(size=(1, D)))
    extra = np.concatenate([joining, new_group, stranger])
    pq.write_table(faces_table([photo] * len(extra), extra, start=len(x)),
                   index_dir / "faces" / "part-00001.parquet")

    summary = cl.cluster_index(index_dir)
    assert summary.mode == "incremental" and summary.new_faces == 6
    assert summary.joined == 2 and summary.new_clusters == 1
    labels = read_clusters(index_dir).column("cluster_id").to_numpy()
    assert np.array_equal(labels[:len(x)], before)  # nobody moved
    assert labels[len(x)] == labels[len(x) + 1] == before[0]
    group = labels[len(x) + 2:len(x) + 5]
    assert len(set(group)) == 1 and group[0] > before.max()
    assert labels[-1] == -1
    # only the changed clusters got a sheet
    sheets = {p.name for p in (index_dir / "clusters" / "sheets").glob("*.png")}
    assert sheets == {f"cluster-{before[0]:05d}.png", f"cluster-{group[0]:05d}.png"}

    assert cl.cluster_index(index_dir, recluster=True, sheets=False).mode == "full"
    assert cl.cluster_index(index_dir, max_distance=0.8, sheets=False).reason.startswith("parameters")


def test_cluster_cli(collection, capsys):
    from facenet_platform.cli import main

    index_dir = collection[0]
    code = main(["index", "cluster", "--index", str(index_dir), "--no-sheets", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["n_clusters"] == 5 and summary["unassigned"] == 25
    assert summary["size_histogram"] and summary["largest"][0] >= summary["largest"][-1]
    code = main(["index", "cluster", "--index", str(index_dir), "--no-sheets"])
    out, _ = capsys.readouterr()
    assert code == 0 and "incremental clustering" in out and "5 clusters" in out


def test_cli_defaults_name_the_registered_clusterers():
    from facenet_platform.index import people_cluster_defaults

    assert set(people_cluster_defaults.ALGORITHMS) == set(cl.CLUSTERERS)
    assert cl.DEFAULT_ALGORITHM in cl.CLUSTERERS


def test_cluster_cli_errors(tmp_path, capsys):
    from facenet_platform.cli import main

    code = main(["index", "cluster", "--index", str(tmp_path / "empty")])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "index build" in err
    code = main(["index", "cluster", "--index", str(tmp_path), "--min-faces", "0"])
    _, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1
    with pytest.raises(DatasetError):
        cl.read_collection_faces(IndexLayout.open(tmp_path / "empty"))
