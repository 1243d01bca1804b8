"""`make bench` keeps working: the harness on a handful of images (its figures mean nothing at this size)."""
import json

import numpy as np
import pytest

from conftest import run_module


@pytest.mark.slow
def test_bench_harness_runs_and_reports_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    r = run_module("bench", "--n", 24, "--img-size", 75, "--repeats", 1, "--rss-rows", 120, "--mem-budget", "1M",
                   "--ft-n", 24, "--baseline-rows", 200, "--skip-ray", "--device-figures", "--sweep-trials", 2,
                   "--sweep-epochs", 2, "--report-rows", 2000, "--work", tmp_path / "work", "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["targets"]) == {"extract_vs_forward", "head_epoch_speedup", "first_head_speedup", "head_rss_growth",
                                   "cached_finetune_speedup"}
    for t in res["targets"].values():
        assert t["value"] > 0 and isinstance(t["met"], bool)
    assert res["rss"]["head_peak_rss_mib_4x"] > 0 and res["rss"]["cache_mib_4x"] > 3 * res["rss"]["cache_mib_1x"]
    assert {"cpu", "cores", "gpus", "versions"} <= set(res["machine"])
    f = res["float16_vs_float32"]
    assert f["disk_mib_float16"] < f["disk_mib_float32"] and 0 <= f["head_float16"]["val_accuracy"] <= 1
    assert res["device"]["finetune_img_s_float32"] > 0 and res["device"]["finetune_img_s_mixed_float16"] > 0
    assert res["ray_note"] == "not measured: --skip-ray"
    assert res["baseline_at_scale"]["rows"] == 200 and res["baseline_at_scale"]["seconds"] > 0
    ft = res["cached_finetune"]
    assert ft["disk_bytes_per_view"] > 0 and ft["ram_bytes_per_view"] == 4 * np.prod(ft["feature_shape"])
    assert len(ft["cached_epoch_s_runs"]) == len(ft["end_to_end_epoch_s_runs"]) == 2  # warm-up + 1 timed
    assert ft["flop_ceiling"] > 1 and res["head_epoch_flop_ceiling"] > 1  # the frozen part is never free
    assert {"extraction", "head", "recipe", "float16", "rss", "cached_finetune", "device"} <= set(res["section_s"])
    assert set(res["head_breakdown"]) == {"head_epoch_s_in_memory_adam", "head_epoch_s_in_memory_sgd"}
    assert min(res["head_breakdown"].values()) > 0
    assert res["pooled_vs_flatten_epoch"] > 0 and res["head_kinds"]["pooled_parameters"] < res["head_kinds"][
        "flatten_parameters"]
    assert res["sweep_2_s"] > 0 and res["sweep"]["complete"] + res["sweep"]["pruned"] == 2
    assert res["tta"]["tta_flip_cost"] > 0 and res["report_s"] > 0 and res["report"]["at_scale"]["rows"] == 2000
    assert res["checksums"]["plain_read_mb_s"] > 0 and res["checksums"]["checksummed_read_mb_s"] > 0
    assert {"head_kinds", "sweep", "tta", "report", "checksums"} <= set(res["section_s"])
    md = (tmp_path / "bench.md").read_text()
    for key in ("head_epoch_speedup", "pooled_vs_flatten_epoch", "sweep_2_s", "report_s", "checksum_read_cost"):
        assert f"| `{key}` |" in md, key
    assert not (tmp_path / "work").exists()  # scratch removed


def test_step_gflops_counts_only_what_a_train_step_runs():
    """4 -> Dense(8), frozen -> Dense(2, sigmoid), trained; batch 1, no biases. Forward: 2*4*8 + 2*8*2 = 96 FLOPs.
    A train step adds the trained kernel's gradient (2*8*2 = 32), and nothing for the frozen layer or the input
    gradient below the trained one: 224 would mean dead backward ops were counted."""
    import keras

    from bench.profile import step_gflops

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, use_bias=False, trainable=False),
                              keras.layers.Dense(2, use_bias=False, activation="sigmoid")])
    assert step_gflops(model, (4,), train=False) * 1e9 == 96
    assert step_gflops(model, (4,), train=True) * 1e9 == 128
