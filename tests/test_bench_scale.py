"""`make bench SCALE_N=...`, the Kaggle-size run, at a tiny size: every figure present, finite and positive (their
values mean nothing at this size); and its synthetic cache is a real, learnable cache in the project's format."""
import json
import math

import numpy as np
import pytest

from conftest import IMG, run_module


def test_synthetic_cache_is_a_cache_stage_2_reads(tmp_path):
    from bench.synthcache import SIGNAL_CHANNELS, WRITE_ROWS, write_synthetic_cache
    from cache import SPLIT_TRAIN, SPLIT_VAL, open_cache

    shapes = {"mixed7": (3, 3, 768), "mixed6": (3, 3, 768)}
    n = WRITE_ROWS + 44  # two commits, the last one short
    path = write_synthetic_cache(tmp_path / "f.h5", n, IMG, shapes, seed=3)
    with open_cache(path, layer="mixed7", need_labels=True) as c:
        assert len(c) == n and c.layers == ["mixed7", "mixed6"] and c.feature_shape("mixed6") == (3, 3, 768)
        assert "synthetic" in c.config and c.config["image_size"] == IMG and c.config["weights"] == "none"
        assert abs(len(c.rows(SPLIT_VAL)) - 0.2 * n) <= 1 and len(c.rows(SPLIT_TRAIN)) + len(c.rows(SPLIT_VAL)) == n
        assert abs(c.labels.mean() - 0.5) <= 1 / n  # balanced, as Kaggle's train set
        x = c.read(np.arange(n), "mixed6")
    assert x.min() == 0 and 0.3 < x[..., SIGNAL_CHANNELS:].mean() < 0.5  # ReLU(N(0, 1)): mean 0.40
    pooled = x.mean(axis=(1, 2))[:, :SIGNAL_CHANNELS].mean(axis=1)
    y = c.labels
    assert pooled[y == 1].min() > pooled[y == 0].max()  # the class signal is there, in every row


@pytest.mark.slow
def test_scale_mode_writes_every_figure(tmp_path):
    out = tmp_path / "bench_scale.json"
    r = run_module("bench", "--scale-n", 96, "--img-size", IMG, "--scale-images", 64, "--mem-budget", "1M",
                   "--work", tmp_path / "work", "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["config"]["n"] == 96 and res["config"]["mem_budget"] == "1M"
    assert res["config"]["layers"] == {"mixed7": [3, 3, 768], "mixed6": [3, 3, 768]}
    assert {"cpu", "cores", "versions"} <= set(res["machine"])
    for part in ("cache", "head", "baseline", "cached_finetune", "extraction"):
        p = res[part]
        for key in ("rows", "seconds", "rows_per_s", "peak_rss_mib", "disk_bytes"):
            assert math.isfinite(p[key]) and p[key] > 0, (part, key, p[key])
    # Peak RSS is each child's own: TensorFlow's processes far above this one, which never loads it.
    assert res["parent_rss_mib"] < 400 < min(res[p]["peak_rss_mib"] for p in ("head", "cached_finetune", "extraction"))
    assert res["cache"]["disk_bytes"] >= 96 * 2 * 3 * 3 * 768 * 4
    assert res["head"]["streamed"] and res["head"]["epochs"] == 2 and len(res["head"]["epoch_s_runs"]) == 2
    assert res["cached_finetune"]["train_rows"] + res["cached_finetune"]["val_rows"] == 96
    e = res["extraction"]
    assert e["extrapolated"] is True and e["images"] == 64 and e["images_extrapolated"] == 96 and "formula" in e
    est = res["kaggle_estimate"]
    assert set(est["stages"]) == {"extraction", "head", "cached_finetune"} and est["images"] == 25_000
    for s in est["stages"].values():
        assert s["seconds"] > 0 and s["basis"] == "extrapolated" and s["formula"]
    assert est["total_seconds"] == pytest.approx(sum(s["seconds"] for s in est["stages"].values()))
    md = (tmp_path / "bench_scale.md").read_text()
    assert "| cached_finetune (one epoch) | 96 |" in md and "| total |" in md
    assert not (tmp_path / "work").exists()  # scratch removed


def test_scale_mode_refuses_a_disk_too_small(tmp_path, monkeypatch):
    """The space check runs before anything is written: 25,000 rows at 150 px need ~7.5 GB."""
    import shutil

    from bench.scale import ScaleOptions, _run
    from core.space import NoSpace

    monkeypatch.setattr("bench.scale.in_child", lambda fn, *a: {"result": ({}, ({"mixed7": (7, 7, 768),
                                                                                 "mixed6": (7, 7, 768)}, 8_975_264))})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 9 << 30, 1 << 30))
    with pytest.raises(NoSpace, match=r"--work=.*work: needs about 1[01]\.\d GB"):
        _run(ScaleOptions(work=str(tmp_path / "work"), out=str(tmp_path / "o.json")))
    assert not (tmp_path / "work").exists()
