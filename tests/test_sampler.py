import numpy as np

from cml_dgl.train.draws import host as smp


def test_edge_index_contains_and_neighbors(tiny_dataset):
    ds = tiny_dataset
    rng = np.random.default_rng(0)
    for k in range(ds.n_behaviors):
        u, i = ds.edges(k)
        idx = smp.EdgeIndex(u, i, ds.n_users, ds.n_items)
        assert idx.contains(u, i).all()
        dense = np.zeros((ds.n_users, ds.n_items), bool)
        dense[u, i] = True
        qu = rng.integers(0, ds.n_users, 500)
        qi = rng.integers(0, ds.n_items, 500)
        np.testing.assert_array_equal(idx.contains(qu, qi), dense[qu, qi])
        users = np.repeat(np.arange(ds.n_users), 20)
        nb = idx.random_neighbor(users, rng)
        has = dense.any(1)[users]
        assert (nb[~has] == -1).all()
        assert dense[users[has], nb[has]].all()
        neg = idx.sample_negatives(users, rng)
        assert not dense[users, neg].any()


def test_negatives_are_uniform_over_non_edges():
    users = np.zeros(3, dtype=np.int64)
    items = np.array([0, 1, 2])
    idx = smp.EdgeIndex(users, items, 1, 6)
    neg = idx.sample_negatives(np.zeros(30000, dtype=np.int64), np.random.default_rng(1))
    counts = np.bincount(neg, minlength=6)
    assert counts[:3].sum() == 0
    assert np.allclose(counts[3:] / 30000, 1 / 3, atol=0.02)


def test_cml_epoch_samples_align_with_target_edges(tiny_dataset):
    ds = tiny_dataset
    index = smp.edge_indices(ds)
    s = smp.cml_epoch_samples(ds, index, np.random.default_rng(3))
    K = ds.n_behaviors
    tu, ti = ds.edges(K - 1)
    assert sorted(zip(s.users, s.pos[K - 1])) == sorted(zip(tu, ti))
    for k in range(K):
        ok = s.pos[k] >= 0
        assert index[k].contains(s.users[ok], s.pos[k][ok]).all()
        assert not index[k].contains(s.users, s.neg[k]).any()
        assert ((s.pos[k] < 0) == (index[k].degree[s.users] == 0)).all()
    trip = s.batch(0, 5)
    assert len(trip) == K and len(trip[K - 1]) == 5


def test_meta_triples_counts(tiny_dataset):
    ds = tiny_dataset
    idx = smp.edge_indices(ds)[0]
    users = np.arange(ds.n_users)
    t = smp.meta_triples(users, idx, 3, np.random.default_rng(0))
    expect = np.minimum(idx.degree, 3)
    np.testing.assert_array_equal(np.bincount(t.users, minlength=ds.n_users), expect)
    assert idx.contains(t.users, t.pos).all() and not idx.contains(t.users, t.neg).any()


def test_same_seed_same_samples(tiny_dataset):
    a = smp.cml_epoch_samples(tiny_dataset, smp.edge_indices(tiny_dataset), np.random.default_rng(5))
    b = smp.cml_epoch_samples(tiny_dataset, smp.edge_indices(tiny_dataset), np.random.default_rng(5))
    np.testing.assert_array_equal(a.pos, b.pos)
    np.testing.assert_array_equal(a.neg, b.neg)


def test_meta_pointer_cycles_and_default_meta_users(tiny_dataset):
    p = smp.MetaPointer(np.arange(5), 3)
    got = [p.next().tolist() for _ in range(3)]
    assert got == [[0, 1, 2], [3, 4, 0], [1, 2, 3]]
    mu = smp.default_meta_users(tiny_dataset, np.random.default_rng(0))
    K = tiny_dataset.n_behaviors
    buyers = set(tiny_dataset.edges(K - 1)[0])
    aux = set(np.concatenate([tiny_dataset.edges(k)[0] for k in range(K - 1)]))
    assert set(mu) == buyers & aux
    assert len(set(mu)) == len(mu)


def test_contrast_sample_size():
    users = np.arange(100)
    s = smp.contrast_sample(users, 0.1, np.random.default_rng(0))
    assert len(s) == 10 and len(set(s)) == 10
    assert len(smp.contrast_sample(users[:5], 0.1, np.random.default_rng(0))) == 0
