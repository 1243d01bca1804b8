"""An incremental cache: `make features` on changed data runs the backbone on what it must, and nothing else.

Each test counts the images the backbone saw (every image the pipeline decodes for a forward pass), checks that the
rows it kept are bit-identical, and that the split holds still. Reads generated images; writes under tmp_path.
Example: python -m pytest tests/test_update.py -q
"""
import os
import shutil

import h5py
import numpy as np
import pytest

from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache
from conftest import assert_user_error, extract_args, head_args, run_module
from extract import pipeline, splits
from extract.synth import make_dataset


@pytest.fixture
def seen(monkeypatch):
    """The images the backbone saw in this test, by index into the batch's image list (counted as decoded)."""
    count = []
    batches = pipeline.image_batches

    def counting(root, paths, size, batch, indices=None):
        idx = np.arange(len(paths)) if indices is None else np.asarray(indices)
        count.extend(paths[i] for i in idx)
        return batches(root, paths, size, batch, indices)

    monkeypatch.setattr(pipeline, "image_batches", counting)
    return count


def _extract(data, out, capsys, *extra):
    from extract.__main__ import main

    assert main(extract_args(data, out, *extra)) == 0
    return capsys.readouterr().out


def _rows(path, layer=None):
    with open_cache(path) as c:
        return {p: (x, int(s), int(y)) for p, x, s, y in zip(c.paths, c.read(np.arange(len(c)), layer=layer),
                                                             c.split, c.labels)}


def _add(data, n, seed, first):
    """n new Kaggle-named images, numbered from `first`."""
    make_dataset(data.parent / f"new{seed}", n=n, layout="kaggle", seed=seed, junk=False)
    for name in sorted(os.listdir(data.parent / f"new{seed}")):
        kind, num, ext = name.split(".")
        shutil.copy(data.parent / f"new{seed}" / name, data / f"{kind}.{int(num) + first}.{ext}")


@pytest.fixture
def base(tmp_path, capsys):
    data, out = tmp_path / "d", tmp_path / "f.h5"
    make_dataset(data, n=40, layout="kaggle", seed=4, broken=1, junk=False)
    _extract(data, out, capsys)
    return data, out


def test_an_add_extracts_the_new_images_alone_and_keeps_every_row_bit_for_bit(base, capsys, seen):
    data, out = base
    before = _rows(out)
    _add(data, 6, 7, 1000)
    line = _extract(data, out, capsys)
    assert len(seen) == 6 and all(".10" in p for p in seen), seen
    assert "40 rows kept, 6 new" in line and "0 excluded, 0 removed" in line and "0 labels changed" in line, line
    after = _rows(out)
    assert len(after) == 46
    for p, (x, s, y) in before.items():  # unchanged rows: the same bytes, the same side, the same label
        assert np.array_equal(after[p][0], x) and after[p][1:] == (s, y)
    seen.clear()
    assert "up to date" in _extract(data, out, capsys) and not seen


def test_removal_exclude_relabel_and_a_new_split_run_no_forward_pass(base, tmp_path, capsys, seen):
    data, out = base
    before = _rows(out)
    victims = sorted(before)[:3]
    os.remove(data / victims[0])
    line = _extract(data, out, capsys)
    assert "39 rows kept, 0 new" in line and "1 removed" in line and not seen, line
    (tmp_path / "ex.txt").write_text(victims[1] + "\n")
    line = _extract(data, out, capsys, "--exclude", str(tmp_path / "ex.txt"))
    assert "1 excluded" in line and victims[1] not in _rows(out) and not seen, line
    other = "dog" if victims[2].startswith("cat") else "cat"
    (tmp_path / "fix.csv").write_text(f"path,label\n{victims[2]},{other}\n")
    line = _extract(data, out, capsys, "--relabel", str(tmp_path / "fix.csv"))
    rows = _rows(out)
    assert "1 labels changed" in line and rows[victims[2]][2] != before[victims[2]][2] and not seen, line
    assert victims[1] in rows  # EXCLUDE left out: back, from the rows the cache kept, without a forward pass
    line = _extract(data, out, capsys, "--seed", "7", "--relabel", str(tmp_path / "fix.csv"))
    resplit = _rows(out)
    assert not seen and "0 new" in line
    assert any(resplit[p][1] != rows[p][1] for p in rows)  # a new SEED draws afresh
    assert all(np.array_equal(resplit[p][0], before[p][0]) for p in resplit)


def test_a_changed_file_is_extracted_again_alone(base, capsys, seen):
    data, out = base
    before = _rows(out)
    victim = sorted(before)[5]
    make_dataset(data.parent / "other", n=2, layout="kaggle", seed=99, junk=False)
    donor = sorted(p for p in os.listdir(data.parent / "other") if p.startswith(victim.split(".")[0]))[0]
    shutil.copy(data.parent / "other" / donor, data / victim)
    line = _extract(data, out, capsys)
    assert seen == [victim], seen
    assert "0 new, 1 changed" in line and "0 removed" in line, line
    assert not np.array_equal(_rows(out)[victim][0], before[victim][0])


def test_a_sigkill_mid_update_leaves_the_old_cache_and_the_rerun_finishes_it(base, capsys, seen):
    from cache.writer import CacheWriter

    data, out = base
    before = _rows(out)
    _add(data, 40, 8, 2000)
    commit = CacheWriter.commit

    def killed(self, *a, **k):
        commit(self, *a, **k)
        raise KeyboardInterrupt  # after the first commit of the new segment: as a kill, leaves its partial

    CacheWriter.commit = killed
    try:
        from extract.__main__ import main

        with pytest.raises(SystemExit):
            main(extract_args(data, out))
    finally:
        CacheWriter.commit = commit
    assert _rows(out).keys() == before.keys()  # the old cache, whole and readable
    seg = [p for p in os.listdir(out.parent) if p.endswith(".h5.partial")]
    assert seg, os.listdir(out.parent)
    seen.clear()
    line = _extract(data, out, capsys)
    assert "resuming at input 16/40" in line and len(seen) == 24, line
    assert len(_rows(out)) == 80


@pytest.mark.slow
def test_a_head_trained_before_an_add_is_stale_and_says_what_changed(base, tmp_path, capsys):
    data, out = base
    head_dir = tmp_path / "head"
    r = run_module("classify", *head_args(out, head_dir, "--epochs", "1"))
    assert r.returncode == 0, r.stderr
    _add(data, 4, 9, 3000)
    _extract(data, out, capsys)
    r = run_module("finetune", "--data", data, "--features", out, "--head-dir", head_dir, "--model-dir",
                   tmp_path / "ft", "--epochs", "1")
    assert_user_error(r, "trained on another cache", "FEATURES changed since: 4 new", "make head")
    r = run_module("classify", *head_args(out, head_dir, "--epochs", "1"))
    assert r.returncode == 0 and f"{head_dir}: stale (FEATURES changed since: 4 new); retraining" in r.stdout


@pytest.mark.slow
def test_views_and_ensemble_caches_update_incrementally(tmp_path, capsys, seen):
    data = tmp_path / "d"
    make_dataset(data, n=24, layout="kaggle", seed=5, junk=False)
    views = tmp_path / "v.h5"
    _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1")
    ens = tmp_path / "e.h5"
    from extract.__main__ import main

    assert main(["--data", str(data), "--features", str(ens), "--backbones", "inception_v3:75,resnet50:32",
                 "--weights", "none", "--batch", "8", "--precision", "float32"]) == 0
    _add(data, 3, 11, 4000)
    seen.clear()
    assert "24 rows kept, 3 new" in _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1")
    assert len(seen) == 3
    with open_cache(views) as c:
        train = c.rows(SPLIT_TRAIN)
        assert np.isfinite(c.read_views(train, 0, layer="mixed6")).all()
    seen.clear()
    line = _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1", "--val-split", "0.4")
    with open_cache(views) as c:  # rows that were val have views too: a new split needs no forward pass
        assert not seen and np.isfinite(c.read_views(c.rows(SPLIT_TRAIN), 0, layer="mixed6")).all(), line
    line = _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1", "--val-split", "0.4",
                    "--seed", "3")  # SEED too: the views keep the seed they were drawn with
    assert not seen and "27 rows kept, 0 new" in line, line
    assert "up to date" in _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1",
                                    "--val-split", "0.4", "--seed", "3")
    assert main(["--data", str(data), "--features", str(ens), "--backbones", "inception_v3:75,resnet50:32",
                 "--weights", "none", "--batch", "8", "--precision", "float32"]) == 0
    assert "24 rows kept, 3 new" in capsys.readouterr().out and len(seen) == 3


@pytest.mark.parametrize("rows, expect", [
    ("path,label\nnot-there.jpg,cat\n", ["line 2 names 'not-there.jpg', not an image of DATA"]),
    ("path,label\ncat.0.jpg,horse\n", ["the label 'horse', not one of the classes cat, dog"]),
    ("file,label\ncat.0.jpg,dog\n", ["needs `path` and `label` columns"]),
])
def test_every_bad_relabel_gets_one_error_line(tmp_path, rows, expect):
    make_dataset(tmp_path / "d", n=6, layout="kaggle", seed=1, junk=False)
    (tmp_path / "fix.csv").write_text(rows)
    r = run_module("extract", *extract_args(tmp_path / "d", tmp_path / "f.h5", "--relabel", tmp_path / "fix.csv"))
    assert_user_error(r, *expect)


def test_the_split_rule_holds_still_under_adds_and_removals():
    rng = np.random.default_rng(0)
    paths = [f"img{i:05d}.jpg" for i in range(3000)]
    labels = rng.integers(0, 3, len(paths))
    split = splits.extend(labels, paths, 0.2, 42, np.full(len(paths), splits.NEW))  # fresh
    for c in range(3):  # a fresh draw: each class's val share within one image of VAL_SPLIT
        n = (labels == c).sum()
        assert abs((split[labels == c] == SPLIT_VAL).sum() - round(0.2 * n)) <= 1
    for step in range(5):  # add 300, remove 100, five times: no image ever changes side
        keep = rng.permutation(len(paths))[100:]
        old = {p: s for p, s in zip(paths, split)}
        paths = [paths[i] for i in sorted(keep)] + [f"new{step}-{i}.jpg" for i in range(300)]
        labels = np.concatenate([labels[sorted(keep)], rng.integers(0, 3, 300)])
        split = splits.extend(labels, paths, 0.2, 42, np.array([old.get(p, splits.NEW) for p in paths]))
        assert all(split[i] == old[p] for i, p in enumerate(paths) if p in old)
        for c in range(3):
            share = (split[labels == c] == SPLIT_VAL).mean()
            assert abs(share - 0.2) <= 0.01 or abs(share * (labels == c).sum() - 0.2 * (labels == c).sum()) <= 1, share


@pytest.mark.slow
def test_a_missing_segment_or_old_views_rebuild_the_cache_in_one_line(base, capsys, seen):
    data, out = base
    _add(data, 2, 12, 5000)
    _extract(data, out, capsys)
    os.remove(str(out).replace(".h5", ".seg-0001.h5"))
    seen.clear()
    line = _extract(data, out, capsys)
    assert "rebuilding" in line and len(seen) == 43, line  # 42 images and the broken one, all of them again
    assert not [p for p in os.listdir(out.parent) if ".seg-" in p]  # the rebuilt file holds every row itself
    views = out.parent / "v.h5"
    _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1")
    with h5py.File(views, "r+") as f:  # as a cache written before views held every row
        from cache.format import VIEWS_TRAIN_ROWS

        f["views/mixed6"].attrs["rows"] = VIEWS_TRAIN_ROWS
    _add(data, 2, 13, 6000)
    line = _extract(data, views, capsys, "--layers", "mixed7,mixed6", "--aug-views", "1")
    assert "its views cover train rows only (written before updates existed), so it is rebuilt once" in line, line
