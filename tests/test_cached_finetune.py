"""Cached fine-tuning: augmented views in the cache, the same gradients and predictions as end-to-end, the artifact."""
import json
import os

import numpy as np
import pytest

from cache import SPLIT_TRAIN, SPLIT_VAL, CacheMismatch, CacheWriter, cache_state, open_cache
from core import WorkflowError
from conftest import IMG, extract_args

K = 2  # augmented views per train image in the fixture cache


@pytest.fixture(scope="module")
def views_cache(train_dir, tmp_path_factory):
    """`make features LAYERS=mixed6,mixed7 AUG_VIEWS=2` of the shared synthetic train set (75 px, WEIGHTS=none)."""
    from extract.__main__ import main

    path = tmp_path_factory.mktemp("views") / "features.h5"
    assert main(extract_args(train_dir, path, "--layers", "mixed6,mixed7", "--aug-views", str(K))) == 0
    return path


@pytest.fixture(scope="module")
def head_dir(views_cache, tmp_path_factory):
    """`make head LAYER=mixed7` on that cache: the real stage 2, briefly."""
    from classify.__main__ import main

    d = tmp_path_factory.mktemp("head")
    assert main(["--features", str(views_cache), "--head-dir", str(d), "--layer", "mixed7", "--epochs", "6",
                 "--lr", "1e-3", "--batch", "16", "--seed", "0"]) == 0
    return d


@pytest.fixture(scope="module")
def built(views_cache, head_dir):
    """(full model, trunk, cached model, trained names, stage-2 head, open cache) as stage 3 assembles them."""
    from finetune import cached as fc, model as fm

    cache = open_cache(views_cache, need_labels=True)
    model, trunk, head_src = fm.assemble(cache, str(head_dir), "mixed7")
    cached, names = fc.build_cached_model(model, trunk, "mixed6")
    yield model, trunk, cached, names, head_src, cache
    cache.close()


def ft_settings(train_dir, features, head_dir, model_dir, **extra):
    """`make finetune FROM_CACHE=1 BATCH=16 ...` as stage 3's library takes it."""
    from finetune.run import Settings

    return Settings(data=str(train_dir), features=str(features), head_dir=str(head_dir), model_dir=str(model_dir),
                    batch=16, from_cache=True, **extra)


# -- augmented views ---------------------------------------------------------------------------------------
def test_views_are_deterministic_per_image_and_view():
    from extract.synth import draw
    from extract.views import make_views, view_transform

    rng = np.random.default_rng(0)
    imgs = np.stack([draw(i % 2, IMG, IMG, rng) for i in range(3)])
    a, b = make_views(imgs, [7, 8, 9], 3, seed=42), make_views(imgs, [7, 8, 9], 3, seed=42)
    assert a.shape == (3, 3, IMG, IMG, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # Seeded per (input index, view) alone: the batch an image arrives in does not matter.
    assert np.array_equal(make_views(imgs[1:2], [8], 3, seed=42), a[1:2])
    for i in range(3):
        for v in range(3):
            assert not np.array_equal(a[i, v], imgs[i])  # every view is warped
            for w in range(v):
                assert not np.array_equal(a[i, v], a[i, w])  # another view index, another view
    assert not np.array_equal(make_views(imgs[:1], [99], 3, seed=42), a[:1])  # another image index
    assert not np.array_equal(make_views(imgs, [7, 8, 9], 3, seed=43), a)  # another seed
    # Small warps: a view stays close to its image (the mean colour moves little), unlike another class's image.
    assert np.abs(a.astype(float).mean(axis=(2, 3)) - imgs.astype(float).mean(axis=(1, 2))[:, None]).max() < 20
    t = np.stack([view_transform(i, v, IMG, 42) for i in range(50) for v in range(4)])
    scale = np.hypot(t[:, 0], t[:, 3])
    assert 0.9 - 1e-6 <= scale.min() and scale.max() <= 1.1 + 1e-6  # zoom within +-10 %
    assert (np.sign(t[:, 0] * t[:, 4]) < 0).any() and (np.sign(t[:, 0] * t[:, 4]) > 0).any()  # flipped or not


@pytest.mark.slow
def test_augmentation_policy_is_part_of_the_fingerprint(views_cache, train_dir, monkeypatch):
    from cache import fingerprint
    from extract import features, views

    def state(aug_views=0):
        s = features.Settings(data=str(train_dir), features=str(views_cache), img_size=IMG, layers=("mixed6", "mixed7"),
                              weights="none", batch=16, aug_views=aug_views, precision="float32")  # as views_cache
        return cache_state(str(views_cache), fingerprint(features.resolve_config(features.make_plan(s))))

    assert state(K) == "up-to-date"
    assert state(K + 1) == "stale"
    assert state() == "stale"  # no views
    monkeypatch.setattr(views, "ROTATION", views.ROTATION / 2)  # the policy's code changed
    assert state(K) == "stale"
    with open_cache(views_cache) as c:
        assert json.loads(c.f.attrs["augmentation"]) == c.config["augmentation"]
        assert c.config["augmentation"]["views"] == K and c.config["augmentation"]["layers"] == ["mixed6"]


@pytest.mark.slow
def test_cached_views_equal_the_backbone_on_the_views(views_cache, train_dir):
    from extract.backbone import build_backbone
    from extract.backbones import get
    from extract.images import discover, load_image
    from extract.views import make_views

    with open_cache(views_cache) as c:
        tr = c.rows(SPLIT_TRAIN)
        assert c.view_layers == ["mixed6"] and c.n_views("mixed6") == K and c.n_views("mixed7") == 0
        assert c.f["views/mixed6"].shape == (len(c), K) + c.feature_shape("mixed6")  # every row's, val rows too
        model = build_backbone(get("inception_v3"), IMG, ["mixed6"], "none")
        index = {p: i for i, p in enumerate(discover(train_dir).paths)}  # views are seeded by input index
        rows = tr[[0, 1, len(tr) // 2, len(tr) - 1]]
        imgs = np.stack([load_image(os.path.join(train_dir, c.paths[r]), IMG) for r in rows])
        live = make_views(imgs, [index[c.paths[r]] for r in rows], K, c.config["split_seed"])
        for v in range(K):
            expect = model(live[:, v].astype("float32"), training=False).numpy()
            np.testing.assert_allclose(c.read_views(rows, v, "mixed6"), expect, rtol=1e-4, atol=1e-6)
            assert not np.allclose(c.read_views(rows, v, "mixed6"), c.read(rows, "mixed6"), atol=1e-6)
        mixed = c.read_views(rows[::-1], [1, 0, 1, 0], "mixed6")  # any order, a view per row
        np.testing.assert_array_equal(mixed[0], c.read_views(rows[-1:], 1, "mixed6")[0])
        with pytest.raises(ValueError, match="not train rows"):
            c.read_views(c.rows(SPLIT_VAL)[:1], 0, "mixed6")
        with pytest.raises(CacheMismatch, match="AUG_VIEWS="):
            c.read_views(rows, 0, "mixed7")


@pytest.mark.slow
def test_views_are_committed_with_their_rows_and_survive_a_resume(tmp_path):
    n, shape, rng = 23, (2, 2, 3), np.random.default_rng(0)
    split = np.where(np.arange(n) % 4 == 0, SPLIT_VAL, SPLIT_TRAIN).astype(np.int8)
    feats = rng.random((n,) + shape, np.float32)
    views = rng.random((n, 3) + shape, np.float32)
    broken = {5, 12}  # skipped inputs: no row, no views entry

    def write(path, kill_after=None):
        config = {"layer": "l", "layers": ["l"], "class_names": ["a", "b"]}
        w = CacheWriter(path, config, [f"{i}.jpg" for i in range(n)], np.arange(n) % 2, split, {"l": shape},
                        view_shapes={"l": shape}, n_views=3)
        start = w.start()
        for lo in range(start, n, 5):
            idx = np.array([i for i in range(lo, min(lo + 5, n)) if i not in broken])
            w.commit(idx, {"l": feats[idx]}, [(i, "broken") for i in range(lo, min(lo + 5, n)) if i in broken],
                     min(lo + 5, n), views={"l": views[idx]})
            if kill_after is not None and lo >= kill_after:
                # As if killed mid-way through the next batch: its views written, its counters not.
                r0 = int(w.f.attrs["rows_committed"])
                w.f["views/l"][r0:r0 + 2] = -1.0
                w.f.flush()
                w.f.close()
                return None
        return w.finalize()

    assert write(str(tmp_path / "f.h5"), kill_after=5) is None
    write(str(tmp_path / "f.h5"))  # resumes after the last committed batch
    write(str(tmp_path / "ref.h5"))
    with open_cache(tmp_path / "f.h5") as a, open_cache(tmp_path / "ref.h5") as b:
        rows = np.arange(len(a))
        tr = a.rows(SPLIT_TRAIN)
        kept = np.array([i for i in range(n) if i not in broken])
        assert len(a) == n - 2 and a.f["views/l"].shape == (len(a), 3) + shape
        np.testing.assert_array_equal(a.read(rows, "l"), b.read(rows, "l"))
        for v in range(3):
            np.testing.assert_array_equal(a.read_views(tr, v, "l"), b.read_views(tr, v, "l"))
            np.testing.assert_array_equal(a.read_views(tr, v, "l"), views[kept[tr], v])


@pytest.mark.slow
def test_extract_refuses_views_without_mixed6_or_labels(tmp_path, capsys):
    from extract.__main__ import main
    from extract.synth import make_dataset

    make_dataset(tmp_path / "d", n=6)
    make_dataset(tmp_path / "u", n=4, layout="unlabelled")
    for data, layers, expect in ((tmp_path / "d", "mixed7", "LAYERS=mixed6,mixed7 AUG_VIEWS=2"),
                                 (tmp_path / "u", "mixed6,mixed7", "unlabelled")):
        with pytest.raises(SystemExit) as e:
            main(extract_args(data, tmp_path / "f.h5", "--layers", layers, "--aug-views", "2"))
        err = capsys.readouterr().err
        assert e.value.code == 2 and expect in err and "Traceback" not in err
    assert not (tmp_path / "f.h5").exists()


@pytest.mark.slow
def test_each_epoch_draws_one_view_per_train_image(built):
    from finetune.cached import ViewFeeds

    *_, cache = built
    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    feeds = ViewFeeds(cache, "mixed6", tr, va, 16, 0, 1.0, False)
    d0, d1 = feeds.draws(0).copy(), feeds.draws(1).copy()
    assert np.array_equal(d0, ViewFeeds(cache, "mixed6", tr, va, 16, 0, 1.0, False).draws(0))  # (seed, epoch) only
    assert (d0[va] == 0).all() and set(d0[tr].tolist()) == {0, 1, 2} and (d0[tr] != d1[tr]).any()
    feeds.epoch = 1
    x, rows = feeds.read(tr), tr
    for v in range(K + 1):
        sel = d1[rows] == v
        ref = cache.read(rows[sel], "mixed6") if v == 0 else cache.read_views(rows[sel], v - 1, "mixed6")
        np.testing.assert_array_equal(x[sel], ref)
    np.testing.assert_array_equal(feeds.read(va), cache.read(va, "mixed6"))  # validation: the clean view


@pytest.mark.slow
def test_view_feeds_give_the_same_batches_in_memory_and_streamed(built):
    """MEM_BUDGET decides where the views are read from, never what the batches hold: two epochs of train batches
    (padded, as CachedPath builds them) and the val batches, bit for bit."""
    from finetune.cached import ViewFeeds, hold_views

    *_, cache = built
    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    held, streamed = (ViewFeeds(cache, "mixed6", tr, va, 16, 3, 1.0, m, pad_last=True) for m in (True, False))
    assert (held.source, streamed.source) == ("in memory", "streamed")
    for epoch in (0, 1):
        held.epoch = streamed.epoch = epoch
        assert (held.draws(epoch)[tr] > 0).sum() > len(tr) // 2  # most train rows read a view
        for a, b in zip(list(held.train()) + list(held.val()), list(streamed.train()) + list(streamed.val()),
                        strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u.numpy(), v.numpy())
    need = ViewFeeds.held_bytes(cache, "mixed6", tr, va)
    assert need == 4 * int(np.prod(cache.feature_shape("mixed6"))) * (len(tr) * (K + 1) + len(va))
    assert hold_views(cache, "mixed6", tr, va, str(need))[0] and not hold_views(cache, "mixed6", tr, va, str(need - 1))[0]


# -- equivalence -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_cached_model_is_the_full_models_own_block_and_head(built):
    import keras

    model, trunk, cached, names, _, _ = built
    assert {id(v) for v in cached.trainable_weights} == {id(v) for v in model.trainable_weights}
    assert len(cached.trainable_weights) == 10 + 4  # the mixed7 block's 10 convolutions, the head's 2 Dense
    block = cached.layers[1]
    assert all(model.get_layer(l.name) is l for l in block.layers[1:])  # the same layer objects, not copies
    bns = [l for l in block.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and not any(l.trainable for l in bns)
    assert set(names) == {l.name for l in model.layers if l.trainable}


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_step_changes_the_weights_exactly_as_end_to_end(built, train_dir, optimizer):
    """Images through the full model vs their cached mixed6 features through the cached model, same initial weights.

    SGD's step is -LR x gradient, so it compares the gradients themselves; Adam, compiled by stage 3's own
    compile_for_finetuning, is the step both paths really take. Dropout stays on: both models call the same
    Dropout layer, and restoring its seed state before each step gives both the same mask."""
    import keras

    from extract.images import load_image
    from finetune import train

    model, _, cached, _, _, cache = built
    rows = cache.rows(SPLIT_TRAIN)[:8]
    images = np.stack([load_image(os.path.join(train_dir, cache.paths[r]), IMG) for r in rows]).astype("float32")
    features, y = cache.read(rows, "mixed6"), cache.labels[rows].astype("float32")[:, None]
    seed = model.get_layer("head").get_layer("head_dropout").seed_generator.state
    w0, s0 = [v.numpy().copy() for v in model.weights], seed.numpy().copy()
    trained = {v.path for v in model.trainable_weights}
    lr = 0.1 if optimizer == "sgd" else 1e-5

    def step(m, x, reset_seed=True):
        for v, a in zip(model.weights, w0):
            v.assign(a)
        if reset_seed:
            seed.assign(s0)
        if optimizer == "sgd":
            m.compile(optimizer=keras.optimizers.SGD(lr), loss="binary_crossentropy")
        else:
            train.compile_for_finetuning(m, lr, xla=False)
        m.train_on_batch(x, y)
        return {v.path: v.numpy() - a for v, a in zip(model.weights, w0)}

    try:
        e2e, ours = step(model, images), step(cached, features)
        other_mask = step(cached, features, reset_seed=False)
    finally:
        for v, a in zip(model.weights, w0):
            v.assign(a)
    assert len(trained) == 14
    for path, d in e2e.items():
        if path not in trained:  # frozen weights, BatchNorm statistics included, never move in either path
            assert not d.any() and not ours[path].any(), path
            continue
        scale = np.abs(d).max()
        assert scale > 0, path
        # Most updates agree bit for bit. The rest differ by float rounding: the cache's mixed6 was computed in
        # batches of 16, this batch has 8, and a ReLU near zero can pass or block a tiny gradient. Measured worst:
        # SGD 5e-5 (norm) and 1e-3 of the largest element; Adam 3e-7 (norm) and 5e-5 of LR.
        err = np.abs(ours[path] - d)
        assert np.linalg.norm(err) <= 1e-3 * np.linalg.norm(d), path
        assert err.max() <= (1e-2 * scale if optimizer == "sgd" else 1e-2 * lr), path
    # The comparison can fail: another dropout mask (no seed reset) moves the head's update far beyond tolerance.
    k = next(p for p in trained if "head_dense" in p and "kernel" in p)
    assert np.linalg.norm(other_mask[k] - e2e[k]) > 1e-1 * np.linalg.norm(e2e[k])


@pytest.mark.slow
def test_exported_model_predicts_what_the_cached_model_predicted(built, train_dir, tmp_path):
    from core.runs import epoch_clock
    from finetune import cached as fc, train
    from finetune.probabilities import predict_files
    from finetune.record import load_model, save_model

    model, _, cached, _, _, cache = built
    w0 = [v.numpy().copy() for v in model.weights]
    before = {v.path: a for v, a in zip(model.weights, w0)}
    tr, va = cache.rows(SPLIT_TRAIN), cache.rows(SPLIT_VAL)
    try:
        train.compile_for_finetuning(cached, 1e-3, xla=False)  # a large LR: the weights must really move
        feeds = fc.ViewFeeds(cache, "mixed6", tr, va, 16, 0, 1.0, False)
        cached.fit(feeds.train(), epochs=1, verbose=0, shuffle=False, callbacks=[epoch_clock(feeds)])
        moved = [v.path for v in model.trainable_weights if not np.array_equal(v.numpy(), before[v.path])]
        assert len(moved) == 14  # every block convolution and the head were trained
        rows = np.concatenate([tr, va])
        p_cached = fc.predict_rows(cached, cache, "mixed6", rows, 16)
        path = str(tmp_path / "model.keras")
        save_model(model, path, {"image_size": IMG, "class_names": cache.class_names, "config": {"test": True}})
    finally:
        for v, a in zip(model.weights, w0):
            v.assign(a)
    loaded, meta = load_model(path)  # what `make predict` and `make submission` load
    p_full, broken, _ = predict_files(loaded, meta["image_size"], str(train_dir), [cache.paths[r] for r in rows], 16)
    assert not broken
    assert np.max(np.abs(p_full - p_cached)) <= 1e-3
    assert p_full[:, 1].std() > 0.05  # P(class 1) spread out, so agreement within 1e-3 is no coincidence
    p_before = fc.predict_rows(cached, cache, "mixed6", rows, 16)  # the untrained weights, restored above
    assert np.max(np.abs(p_before - p_cached)) > 1e-2  # and the exported file holds the trained ones


# -- the entry point ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_cached_finetune_writes_the_model_that_predict_loads(views_cache, head_dir, train_dir, tmp_path, capsys):
    from finetune.record import load_model
    from finetune.run import finetune

    model_dir = tmp_path / "ft"
    a = ft_settings(train_dir, views_cache, head_dir, model_dir, epochs=2, lr=1e-4, tb_dir=str(tmp_path / "tb"))
    assert finetune(a) == 0
    out = capsys.readouterr().out
    assert "equivalence:" in out and "export:" in out and "clean + 2 cached views" in out
    model, meta = load_model(str(model_dir / "model.keras"))
    assert meta["image_size"] == IMG and meta["class_names"] == ["cat", "dog"] and meta["config"]["path"] == "cached"
    assert meta["config"]["aug_views"] == K and meta["config"]["unfreeze_from"] == "mixed6"
    assert model.input_shape == (None, IMG, IMG, 3)
    m = json.loads((model_dir / "metrics.json").read_text())
    assert m["equivalence"]["max_abs_diff"] <= 1e-3 and m["export_check"]["max_abs_diff"] <= 1e-3
    assert m["export_check"]["n_images"] > 0 and len(m["history"]["epoch"]) == 2
    assert (model_dir / "curves.png").exists() and not (model_dir / "_work").exists()
    assert finetune(a) == 0 and "up to date" in capsys.readouterr().out
    from test_tensorboard import scalars  # TB_DIR=tb: the run's epochs, as history.csv has them

    train = scalars(tmp_path / "tb" / "finetune" / "train")
    assert [s for s, _ in train["epoch_loss"]] == [0, 1] and all(abs(v - 1e-4) < 1e-10
                                                                 for _, v in train["epoch_learning_rate"])
    assert [s for s, _ in scalars(tmp_path / "tb" / "finetune" / "validation")["epoch_loss"]] == [0, 1]
    # make export on this very record (whatever precision it was saved in: exported and proven in float32)
    from export.run import export_model

    rec = export_model(str(model_dir / "model.keras"), "savedmodel", tmp_path / "export")
    assert rec["proof"]["passed"] and rec["proof"]["max_abs_diff"] <= 1e-4 and rec["proof"]["n"] > 0
    assert rec["temperature"] == m["calibration"]["temperature"] and rec["class_names"] == ["cat", "dog"]


@pytest.mark.slow
def test_cached_finetune_gives_the_same_weights_in_memory_and_streamed(views_cache, head_dir, train_dir, tmp_path,
                                                                       capsys):
    """make finetune FROM_CACHE=1 with MEM_BUDGET=auto (in memory here) and MEM_BUDGET=0 (streamed): one model."""
    from finetune.record import load_model
    from finetune.run import finetune

    weights, notes = [], []
    for budget in ("auto", "0"):
        model_dir = tmp_path / f"ft-{budget}"
        assert finetune(ft_settings(train_dir, views_cache, head_dir, model_dir, epochs=1, lr=1e-3,
                                    mem_budget=budget)) == 0
        weights.append(load_model(str(model_dir / "model.keras"))[0].get_weights())
        notes.append(json.loads((model_dir / "metrics.json").read_text())["config"]["data_note"])
    assert notes[0].startswith("cached fine-tuning data:") and notes[0].endswith("-> in memory"), notes[0]
    assert notes[1].endswith("-> streamed in chunk-aligned windows"), notes[1]
    assert notes[0] in capsys.readouterr().out
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_cached_finetune_refuses_a_cache_without_mixed6(cache_path, head_dir, train_dir, tmp_path):
    from finetune.run import finetune

    with pytest.raises(CacheMismatch, match=r"make features LAYERS=mixed6,mixed7"):
        finetune(ft_settings(train_dir, cache_path, head_dir, tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_cached_finetune_refuses_a_head_of_another_cache(views_cache, head_dir, train_dir, tmp_path):
    import shutil

    from finetune.run import finetune

    other = tmp_path / "head"
    shutil.copytree(head_dir, other)
    record = json.loads((other / "metrics.json").read_text())
    record["cache"]["fingerprint"] = "0" * 64
    (other / "metrics.json").write_text(json.dumps(record))
    with pytest.raises(WorkflowError, match="trained on another cache"):
        finetune(ft_settings(train_dir, views_cache, other, tmp_path / "ft"))
