"""`make bench SCALE_N=...`, the Kaggle-size run, at a tiny size: every part runs, every figure is present, finite
and positive (their values mean nothing at this size), and the derived figures are computed from the measured ones."""
import json
import math

import pytest

from conftest import IMG, run_module


@pytest.mark.slow
def test_scale_mode_writes_every_figure(tmp_path):
    out = tmp_path / "bench_scale.json"
    # As a CPU with native bf16 (core/precision.py), whatever this one is: the bf16 parts run (emulated where it has
    # none), so their code path is tested on every machine.
    r = run_module("bench", "--scale-n", 96, "--scale-small", 48, "--img-size", IMG, "--mem-budget", "1M",
                   "--scale-sweep-trials", 2, "--scale-sweep-epochs", 1, "--scale-ft-n", 32,
                   "--work", tmp_path / "work", "--out", out, env={"PRECISION_CPU_FLAGS": "avx512_bf16"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["config"]["n"] == 96 and res["config"]["small"] == 48 and res["config"]["mem_budget"] == "1M"
    assert {"cpu", "cores", "versions"} <= set(res["machine"]) and res["machine_peaks"]["gemm_gflops_float32"] > 0
    assert res["native_bf16"] is True
    assert set(res["extraction"]) == {"small", "big", "big_bfloat16", "mobilenet_v2_float32", "mobilenet_v2_bfloat16"}
    assert set(res["cached_finetune"]) == {"small", "big", "big_bfloat16"}
    assert res["extraction"]["big_bfloat16"]["precision"] == "bfloat16"
    assert "in bfloat16, PRECISION=auto's pick here" in res["kaggle_estimate"]["stages"]["extraction"]["formula"]
    parts = [*res["extraction"].values(), *res["head"].values(), res["baseline"]["big"], res["report"],
             res["sweep"], *res["cached_finetune"].values()]
    for p in parts:
        for key in ("rows", "seconds", "peak_rss_mib", "disk_bytes"):
            assert math.isfinite(p[key]) and p[key] > 0, (p, key)
    assert res["extraction"]["big"]["rows"] == 96 and res["extraction"]["small"]["rows"] == 48
    h = res["head"]
    assert h["big"]["data"] == "streamed" and h["big"]["epochs"] == 2 and h["small"]["epochs"] == 4
    assert h["big_pooled"]["kind"] == "pooled" and h["big"]["kind"] == "flatten"
    assert res["sweep"]["trials"] == 2 and res["sweep"]["complete"] + res["sweep"]["pruned"] == 2
    f = res["cached_finetune"]
    assert f["big"]["train_rows"] + f["big"]["val_rows"] == 96 and len(f["small"]["epoch_s_runs"]) == 4
    # Peak RSS is each child's own: TensorFlow's processes far above this one, which never loads it.
    assert res["parent_rss_mib"] < 400 < min(p["peak_rss_mib"] for p in (h["big"], f["big"], res["report"]))
    pen = res["scale_penalty"]
    assert pen["head"] == pytest.approx(h["big"]["s_per_train_row"] / h["small"]["s_per_train_row"])
    assert pen["cached_finetune"] == pytest.approx(f["big"]["s_per_train_row"] / f["small"]["s_per_train_row"])
    for k in ("head_small", "head_big", "cached_finetune_small", "cached_finetune_big"):
        assert 0 < res["roofline"][k]["fraction"] < 1.5, (k, res["roofline"][k])  # at the peaks or below (+ noise)
    est = res["kaggle_estimate"]
    assert set(est["stages"]) == {"extraction", "head", "cached_finetune", "report"} and est["images"] == 25_000
    for s in est["stages"].values():
        assert s["seconds"] > 0 and s["basis"] == "extrapolated" and s["formula"]
    assert est["total_seconds"] == pytest.approx(sum(s["seconds"] for s in est["stages"].values()))
    md = (tmp_path / "bench_scale.md").read_text()
    assert "| cached fine-tuning, big | 96 |" in md and "| total |" in md and "scale_penalty" in md
    assert not (tmp_path / "work").exists() and not (tmp_path / "bench_scale.json.partial").exists()


def test_scale_mode_refuses_a_disk_too_small(tmp_path, monkeypatch):
    """The space check runs before anything is written: 25,000 images at 150 px need ~9 GB of caches and JPEGs."""
    import shutil

    from bench.scale import ScaleOptions, _run
    from core.space import NoSpace

    setup = {"machine": {}, "peaks": {}, "shapes": {"mixed7": (7, 7, 768), "mixed6": (7, 7, 768)},
             "backbone_weights": 8_975_264, "head_gflops": {}, "head_weights": 38_537_217}
    monkeypatch.setattr("bench.scale.in_child", lambda fn, *a: {"result": setup})
    monkeypatch.setattr("bench.scale.native_bf16", lambda: False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10 << 30, 9 << 30, 1 << 30))
    with pytest.raises(NoSpace, match=r"--work=.*work: needs about \d+\.\d GB"):
        _run(ScaleOptions(work=str(tmp_path / "work"), out=str(tmp_path / "o.json")))
    assert not (tmp_path / "work").exists()
