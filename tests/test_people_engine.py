"""People engine: update/recluster semantics on planted identities, templates, identification."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from facenet_platform.core.errors import ConfigError
from facenet_platform.index import people_engine as pe

D = 512


def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def planted(people: int = 6, per: int = 8, spread: float = 0.02, seed: int = 0):
    """``people`` identities of ``per`` faces; same-person squared distances ~0.35, others ~2."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.normal(size=(people, D)))
    labels = np.repeat(np.arange(people), per)
    x = unit(centers[labels] + rng.normal(size=(len(labels), D)) * spread)
    return x, labels, centers, rng


def ids(prefix="p"):
    counter = itertools.count()
    return lambda: f"{prefix}{next(counter)}"


def none(n):
    return np.full(n, None, object)


def groups(out, labels):
    """For each planted identity the set of person ids its faces got."""
    return {int(k): set(out[labels == k].tolist()) for k in np.unique(labels)}


OPTS = pe.PeopleOptions(min_quality=0.3)


def test_first_update_finds_the_planted_people():
    x, labels, _, _ = planted()
    out = pe.update_assignments(x, np.ones(len(x)), none(len(x)), np.zeros(len(x), bool), {},
                                OPTS, ids())
    found = groups(out, labels)
    assert all(len(s) == 1 and None not in s for s in found.values())
    assert len(set().union(*found.values())) == len(found)


def test_new_faces_join_existing_people_and_nothing_is_undone():
    x, labels, centers, rng = planted()
    n = len(x)
    # an existing state with one deliberate oddity: face 0 sits in person "odd" alone
    person = np.array([f"person-{k}" for k in labels], object)
    person[0] = "odd"
    new = unit(centers[[1, 2, 2]] + rng.normal(size=(3, D)) * 0.02)
    x2 = np.concatenate([x, new])
    p2 = np.concatenate([person, none(3)])
    out = pe.update_assignments(x2, np.ones(n + 3), p2, np.zeros(n + 3, bool), {}, OPTS, ids("new"))
    assert list(out[:n]) == list(person)          # never undone, even the odd one
    assert list(out[n:]) == ["person-1", "person-2", "person-2"]


def test_rejection_holds_in_update_and_recluster():
    x, labels, centers, rng = planted()
    n = len(x)
    person = np.array([f"person-{k}" for k in labels], object)
    new = unit(centers[[3]] + rng.normal(size=(1, D)) * 0.02)
    x2 = np.concatenate([x, new])
    p2 = np.concatenate([person, none(1)])
    rejected = {n: frozenset({"person-3"})}
    out = pe.update_assignments(x2, np.ones(n + 1), p2, np.zeros(n + 1, bool), rejected, OPTS, ids())
    assert out[n] != "person-3"
    # a face rejected from its own person is taken out by a recluster and stays out
    rejected = {0: frozenset({"person-0"})}
    out = pe.update_assignments(x, np.ones(n), person, np.zeros(n, bool), rejected, OPTS, ids(),
                                recluster=True)
    assert out[0] != "person-0"
    assert set(out[1:8]) == {"person-0"}


def test_low_quality_never_starts_or_joins_a_person():
    x, labels, centers, rng = planted()
    n = len(x)
    person = np.array([f"person-{k}" for k in labels], object)
    # three blurred faces of person 4 and a tight group of four low-quality faces
    low = unit(np.concatenate([centers[[4, 4, 4]], np.repeat(unit(rng.normal(size=(1, D))), 4, 0)])
               + rng.normal(size=(7, D)) * 0.02)
    x2 = np.concatenate([x, low])
    q = np.concatenate([np.ones(n), np.full(7, 0.1)])
    p2 = np.concatenate([person, none(7)])
    for recluster in (False, True):
        out = pe.update_assignments(x2, q, p2, np.zeros(n + 7, bool), {}, OPTS, ids(),
                                    recluster=recluster)
        assert all(v is None for v in out[n:])
        assert list(out[:n]) == list(person)
    # low-quality faces do not shape templates
    pid, templates, owner = pe.person_templates(x2, q, np.concatenate([person, ["person-4"] * 7]),
                                                OPTS)
    t4 = templates[owner == list(pid).index("person-4")][0]
    clean = unit(x[labels == 4].mean(axis=0))
    assert float(np.sum((t4 - clean) ** 2)) < 1e-6


def test_recluster_keeps_ids_and_pinned_faces():
    x, labels, _, _ = planted()
    n = len(x)
    first = pe.update_assignments(x, np.ones(n), none(n), np.zeros(n, bool), {}, OPTS, ids())
    named = np.array([f"name-{v}" for v in first], object)   # e.g. the user named everyone
    # the user moved face 9 (identity 1) to identity 0's person: pinned there
    pinned = np.zeros(n, bool)
    pinned[9] = True
    named[9] = named[0]
    out = pe.update_assignments(x, np.ones(n), named, pinned, {}, OPTS, ids("fresh"), recluster=True)
    assert out[9] == named[0]
    keep = np.arange(n) != 9
    assert list(out[keep]) == list(named[keep])


def test_recluster_splits_a_wrong_merge_and_no_two_clusters_share_an_id():
    x, labels, _, _ = planted()
    n = len(x)
    person = np.array([f"person-{k}" for k in labels], object)
    person[labels == 1] = "person-0"       # two identities wrongly in one person, nothing pinned
    out = pe.update_assignments(x, np.ones(n), person, np.zeros(n, bool), {}, OPTS, ids("fresh"),
                                recluster=True)
    g = groups(out, labels)
    assert len(g[0]) == len(g[1]) == 1 and g[0] != g[1]
    assert "person-0" in g[0] | g[1]
    assert all(list(g[k]) == [f"person-{k}"] for k in range(2, 6))


def test_person_with_pinned_faces_keeps_its_id_even_when_smaller():
    x, labels, _, _ = planted()
    n = len(x)
    person = np.array([f"person-{k}" for k in labels], object)
    person[labels == 1] = "person-0"
    person[(labels == 1)] = "person-0"
    person[8] = "pinned-one"           # one face of identity 1 pinned to its own person
    pinned = np.zeros(n, bool)
    pinned[8] = True
    out = pe.update_assignments(x, np.ones(n), person, pinned, {}, OPTS, ids("fresh"),
                                recluster=True)
    assert set(out[labels == 1]) == {"pinned-one"}
    assert set(out[labels == 0]) == {"person-0"}


def test_pinned_faces_of_two_people_are_never_put_together():
    x, labels, _, _ = planted()
    n = len(x)
    person = none(n)
    pinned = np.zeros(n, bool)
    # two faces of identity 2 pinned to two different people (the user split it)
    person[16], person[17] = "a", "b"
    pinned[[16, 17]] = True
    out = pe.update_assignments(x, np.ones(n), person, pinned, {}, OPTS, ids(), recluster=True)
    assert out[16] == "a" and out[17] == "b"
    assert set(out[labels == 2]) <= {"a", "b"}


def test_templates_mean_and_centroids():
    rng = np.random.default_rng(1)
    # one person with two looks (two sub-centres), 12 faces each
    c = unit(rng.normal(size=(2, D)))
    x = unit(np.repeat(c, 12, axis=0) + rng.normal(size=(24, D)) * 0.02)
    person = np.array(["p"] * 24, object)
    pid, t_mean, o_mean = pe.person_templates(x, np.ones(24), person, OPTS)
    assert list(pid) == ["p"] and t_mean.shape == (1, D) and list(o_mean) == [0]
    opts = pe.PeopleOptions(template="centroids", max_centroids=3)
    pid, t_c, o_c = pe.person_templates(x, np.ones(24), person, opts)
    assert 2 <= len(t_c) <= 3 and set(o_c) == {0}
    assert np.allclose(np.linalg.norm(t_c, axis=1), 1, atol=1e-5)
    # each look is near one of the centroids, nearer than to the mean
    for look in c:
        assert np.max(t_c @ look) > float(t_mean[0] @ look)


def test_identify_against_templates_reasons_and_rejections():
    x, labels, centers, rng = planted()
    person = np.array([f"person-{k}" for k in labels], object)
    pid, t, o = pe.person_templates(x, np.ones(len(x)), person, OPTS)
    probes = unit(np.concatenate([centers[[0, 1, 2]], rng.normal(size=(1, D))]))
    m = pe.identify_against_templates(probes, pid, t, o, 0.8, quality=np.array([1, 1, 0.1, 1]),
                                      min_quality=0.3,
                                      rejected=[frozenset(), frozenset({"person-1"}), frozenset(),
                                                frozenset()])
    assert list(m.person) == ["person-0", None, None, None]
    assert list(m.reason) == ["match", "too_far", "low_quality", "too_far"]
    assert m.distance[0] < 0.1 and m.distance[3] > 1.5
    empty = pe.identify_against_templates(probes, np.array([], object), np.zeros((0, D), np.float32),
                                          np.zeros(0, np.int64), 0.8)
    assert set(empty.reason) == {"no_templates"}


def test_bad_inputs():
    x, labels, _, _ = planted(2, 3)
    n = len(x)
    with pytest.raises(ConfigError):
        pe.update_assignments(x, np.ones(n - 1), none(n), np.zeros(n, bool), {}, OPTS, ids())
    with pytest.raises(ConfigError):
        pe.update_assignments(x, np.ones(n), none(n), np.ones(n, bool), {}, OPTS, ids())
    with pytest.raises(ConfigError):
        pe.update_assignments(x, np.ones(n), none(n), np.zeros(n, bool), {n + 5: frozenset({"a"})},
                              OPTS, ids())
    with pytest.raises(ConfigError):
        pe.PeopleOptions(template="median")
    with pytest.raises(ConfigError):
        pe.PeopleOptions(assign_distance=0)
    empty = pe.update_assignments(np.zeros((0, D), np.float32), np.zeros(0), none(0),
                                  np.zeros(0, bool), {}, OPTS, ids())
    assert len(empty) == 0


# ---------------------------------------------------------------------------------------------
# incremental updates through a kept k-NN index; Ray-sharded queries
# ---------------------------------------------------------------------------------------------

def test_incremental_with_new_mask_and_kept_index():
    from facenet_platform.index.people_knn import KnnIndex

    x, labels, centers, rng = planted(people=6, per=8)
    n = len(x)
    knn = KnnIndex.empty(D, approximate=False)
    first = pe.update_assignments(x, np.ones(n), none(n), np.zeros(n, bool), {}, OPTS, ids("a"),
                                  knn_index=knn)
    assert len(knn) == n
    # later: two faces of an old identity, three of a new one, and one face that pairs with an
    # older unassigned face
    far = unit(rng.normal(size=(1, D)))
    x_old = np.concatenate([x, unit(far + rng.normal(size=(1, D)) * 0.02)])
    p_old = np.concatenate([first, none(1)])
    newcomer = unit(rng.normal(size=(1, D)))
    added = unit(np.concatenate([centers[[5, 5]], np.repeat(newcomer, 3, 0),
                                 far]) + rng.normal(size=(6, D)) * 0.02)
    x2 = np.concatenate([x_old, added])
    p2 = np.concatenate([p_old, none(6)])
    new = np.r_[np.zeros(n + 1, bool), np.ones(6, bool)]
    results = []
    for index in (knn, None):
        out = pe.update_assignments(x2, np.ones(len(x2)), p2, np.zeros(len(x2), bool), {}, OPTS,
                                    ids("b"), new=new, knn_index=index)
        results.append(out)
        assert list(out[:n]) == list(first)
        assert out[n + 1] == out[n + 2] == first[labels == 5][0]
        assert out[n + 3] == out[n + 4] == out[n + 5] and out[n + 3] not in set(first)
        # the older unassigned face pairs with the new one close to it
        assert out[n] is not None and out[n] == out[n + 6] != out[n + 3]
    assert list(results[0]) == list(results[1])
    assert len(knn) == len(x2)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.mark.parametrize("approximate", [False, True])
def test_ray_sharded_knn_equals_in_process(ray_local, approximate):
    from facenet_platform.index import people_knn as pk

    rng = np.random.default_rng(3)
    x = unit(rng.normal(size=(1500, 64)))
    knn = pk.KnnIndex.build(x, approximate)
    rows = np.arange(0, 1500, 7)
    for subset in (None, rows):
        nb, d = pk.search_rows(knn, subset, 8, use_ray=False)
        nb_ray, d_ray = pk.search_rows(knn, subset, 8, use_ray=True, shard_rows=200, actors=2)
        assert np.array_equal(nb, nb_ray)
        assert np.allclose(d, d_ray, atol=1e-5)
    # self excluded, ascending
    nb, d = pk.search_rows(knn, None, 8, use_ray=False)
    assert not np.any(nb == np.arange(1500)[:, None]) and np.all(np.diff(d, axis=1) >= 0)


def test_update_through_ray_equals_in_process(ray_local, monkeypatch):
    from facenet_platform.index import people_knn as pk

    x, labels, _, _ = planted(people=8, per=6)
    n = len(x)
    calls = []
    real = pk._search_ray
    monkeypatch.setattr(pk, "_search_ray", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(pk, "RAY_MIN_QUERIES", 10)     # this small set goes to Ray too
    outs = [pe.update_assignments(x, np.ones(n), none(n), np.zeros(n, bool), {},
                                  pe.PeopleOptions(use_ray=use_ray), ids())
            for use_ray in (False, True)]
    assert list(outs[0]) == list(outs[1]) and calls


def test_merge_groups_joins_a_split_person_and_reads_rows_in_place():
    from facenet_platform.index import people_clusters as cl

    rng = np.random.default_rng(5)
    # identity 0 has two looks whose faces link only loosely; identity 1 is far away
    c = unit(rng.normal(size=(2, D)))
    look = unit(c[0] + unit(rng.normal(size=D)) * 0.5)
    x = unit(np.concatenate([np.repeat(c[:1], 6, 0), np.repeat(look[None], 6, 0),
                             np.repeat(c[1:], 6, 0)]) + rng.normal(size=(18, D)) * 0.02)
    truth = np.repeat([0, 0, 1], 6)
    graph = cl.knn_graph(x, 8)
    tight = cl.CLUSTERERS["chinese-whispers"](graph, 0.5, 2, 0)
    assert len(np.unique(tight[:12])) == 2          # stage 1 alone keeps the looks apart
    merged = pe.merge_groups(x, tight, graph, 1.0, 1.4)
    assert len(np.unique(merged[:12])) == 1 and merged[12] != merged[0]
    assert len(np.unique(merged[12:])) == 1 and list(np.unique(truth[merged == merged[0]])) == [0]
    # the same nodes read through `rows` from a bigger matrix give the same labels
    big = np.concatenate([unit(rng.normal(size=(5, D))), x])
    via_rows = pe.merge_groups(big, tight, graph, 1.0, 1.4, rows=np.arange(5, 23))
    assert np.array_equal(via_rows, merged)
    # faces pinned to two people never merge
    pin = np.full(18, -1)
    pin[0], pin[6] = 0, 1
    kept = pe.merge_groups(x, tight, graph, 1.0, 1.4, cannot_link=pin)
    assert kept[0] != kept[6]


def test_a_new_person_needs_a_seed_face():
    x, labels, _, _ = planted(people=3, per=5)
    n = len(x)
    q = np.ones(n, np.float32)
    q[labels == 1] = 0.2                   # above the floor, under the seed quality
    opts = pe.PeopleOptions(min_quality=0.1, seed_quality=0.3)
    for recluster in (False, True):
        out = pe.update_assignments(x, q, none(n), np.zeros(n, bool), {}, opts, ids(),
                                    recluster=recluster)
        assert all(v is None for v in out[labels == 1])
        assert all(v is not None for v in out[labels != 1])
    q[np.flatnonzero(labels == 1)[0]] = 0.9   # one good face seeds the person
    out = pe.update_assignments(x, q, none(n), np.zeros(n, bool), {}, opts, ids())
    assert len(set(out[labels == 1])) == 1 and out[labels == 1][0] is not None


def test_seed_faces_counts_the_good_faces_of_a_new_group():
    x, labels, _, _ = planted(people=2, per=5)
    n = len(x)
    q = np.full(n, 0.2, np.float32)        # above the floor, under the seed quality
    q[np.flatnonzero(labels == 0)[:2]] = 0.9
    q[np.flatnonzero(labels == 1)[:1]] = 0.9
    opts = pe.PeopleOptions(min_quality=0.1, seed_quality=0.3, seed_faces=2)
    for recluster in (False, True):
        out = pe.update_assignments(x, q, none(n), np.zeros(n, bool), {}, opts, ids(),
                                    recluster=recluster)
        assert len(set(out[labels == 0])) == 1 and out[labels == 0][0] is not None
        assert all(v is None for v in out[labels == 1])
    with pytest.raises(ConfigError, match="seed_faces"):
        pe.PeopleOptions(min_faces=2, seed_faces=3)


@pytest.mark.parametrize("template", ["mean", "centroids"])
def test_match_through_neighbours_equals_exact_matching(template):
    """Comparing a face only with the templates of its neighbours' people gives the exact
    answer when its person owns one of its neighbours (rejections included)."""
    from facenet_platform.index.people_knn import KnnIndex, search_rows

    x, labels, centers, rng = planted(people=8, per=10, spread=0.03)
    n = len(x)
    person = np.array([f"person-{k}" for k in labels], object)
    pending = np.flatnonzero(np.arange(n) % 10 == 0)       # one face of each, unassigned
    person[pending] = None
    opts = pe.PeopleOptions(min_quality=0.3, template=template, max_centroids=2)
    pid, t, o = pe.person_templates(x, np.ones(n), person, opts)
    assert template == "mean" or len(t) > len(pid)
    knn = KnnIndex.build(x, approximate=False)
    nb, _ = search_rows(knn, pending, 5)
    rejected = [frozenset({"person-3"}) if labels[r] == 3 else frozenset() for r in pending]
    _, code = pe.person_codes(person)
    fast = pe.match_through_neighbours(x, pending, nb, code, pid, t, o, 0.8, rejected=rejected)
    exact = pe.identify_against_templates(x[pending], pid, t, o, 0.8, rejected=rejected)
    assert list(fast.person) == list(exact.person)
    assert list(fast.reason) == list(exact.reason)
    np.testing.assert_allclose(fast.distance[np.isfinite(exact.distance) & (exact.distance < 0.8)],
                               exact.distance[np.isfinite(exact.distance) & (exact.distance < 0.8)],
                               atol=1e-5)
    assert fast.person[list(labels[pending]).index(3)] is None       # rejected: never named
    # neighbours without a person: nothing to compare with
    none_nb = pe.match_through_neighbours(x, pending, np.full_like(nb, -1), code, pid, t, o, 0.8)
    assert set(none_nb.reason) == {"too_far"}


def test_update_matches_through_neighbours_above_the_people_switch(monkeypatch):
    """An incremental update with a kept index gives the same people when it matches through
    the neighbours (many people) as when it matches exactly (few people)."""
    from facenet_platform.index.people_knn import KnnIndex

    x, labels, centers, rng = planted(people=10, per=8)
    n = len(x)
    old = np.arange(n) % 8 != 0
    results = []
    for switch in (10**9, 0):
        monkeypatch.setattr(pe, "CANDIDATE_PEOPLE_ABOVE", switch)
        knn = KnnIndex.empty(D, approximate=False)
        first = pe.update_assignments(x[old], np.ones(old.sum()), none(int(old.sum())),
                                      np.zeros(int(old.sum()), bool), {}, OPTS, ids("a"),
                                      knn_index=knn)
        order = np.r_[np.flatnonzero(old), np.flatnonzero(~old)]
        out = pe.update_assignments(x[order], np.ones(n), np.concatenate([first, none(n - len(first))]),
                                    np.zeros(n, bool), {}, OPTS, ids("b"),
                                    new=np.r_[np.zeros(len(first), bool), np.ones(n - len(first), bool)],
                                    knn_index=knn)
        results.append(out)
        found = groups(out, labels[order])
        assert all(len(s) == 1 and None not in s for s in found.values())
    assert list(results[0]) == list(results[1])
