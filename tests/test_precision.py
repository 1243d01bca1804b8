"""PRECISION=auto|float32|bfloat16: the choice from the CPU's flags, the converter, a bf16 cache, stage 3 on it."""
import csv
import json
import os
import shutil

import numpy as np
import pytest

from cache import SPLIT_TRAIN, SPLIT_VAL, cache_state, fingerprint, open_cache
from conftest import IMG, build_cache, head_args

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma", "avx512f"}  # this test machine's kind: no native bf16
K = 2  # augmented views in the bf16 cache (cached fine-tuning needs them)


# -- auto ------------------------------------------------------------------------------------------------------
def test_auto_picks_bfloat16_for_inference_only_with_native_bf16_and_never_with_a_gpu():
    from core import WorkflowError
    from core.precision import describe, resolve

    for flag in ("avx512_bf16", "amx_bf16"):
        assert resolve("auto", "inference", flags=AVX2_ONLY | {flag}, gpu=False) == "bfloat16"
        assert resolve("auto", "inference", flags=AVX2_ONLY | {flag}, gpu=True) == "float32"  # MIXED_PRECISION's
        assert resolve("auto", "training", flags=AVX2_ONLY | {flag}, gpu=False) == "float32"  # bf16 trains slower
    assert resolve("auto", "inference", flags=AVX2_ONLY, gpu=False) == "float32"
    assert resolve("auto", "inference", flags=set(), gpu=False) == "float32"  # no /proc/cpuinfo (macOS)
    assert resolve("auto", "inference", flags={"avx512bw", "avx512_vnni", "amx_int8"}, gpu=False) == "float32"
    for asked in ("float32", "bfloat16"):  # explicit choices are taken as they are, for any use
        for use in ("inference", "training"):
            assert resolve(asked, use, flags=AVX2_ONLY, gpu=True) == asked
    with pytest.raises(WorkflowError, match="PRECISION=fp16: choose one of auto, float32, bfloat16"):
        resolve("fp16", flags=AVX2_ONLY, gpu=False)
    assert "emulated" in describe("bfloat16", "bfloat16", flags=AVX2_ONLY)
    assert "has avx512_bf16" in describe("auto", "bfloat16", flags=AVX2_ONLY | {"avx512_bf16"})
    assert "slower than float32" in describe("auto", "float32", flags={"avx512_bf16"}, use="training")


def test_auto_on_this_machine_follows_its_own_cpu_flags():
    from core.precision import cpu_flags, native_bf16, resolve

    flags = cpu_flags()  # PRECISION_CPU_FLAGS where set: `make test` plays the other kind of CPU with it
    assert resolve("auto", "inference", gpu=False) == ("bfloat16" if {"avx512_bf16", "amx_bf16"} & flags
                                                       else "float32")
    assert native_bf16() == bool({"avx512_bf16", "amx_bf16"} & flags)


@pytest.mark.parametrize("name", __import__("extract.backbones", fromlist=["REGISTRY"]).REGISTRY)
def test_auto_is_decided_per_backbone_and_the_log_line_says_why(name):
    """On a CPU with native bf16, auto keeps a backbone that make bench measured slower in bf16 (the MobileNets) in
    float32, and says so; elsewhere nothing changes."""
    from core.precision import describe, resolve
    from extract import backbones

    spec = backbones.get(name)
    bf16_cpu = AVX2_ONLY | {"avx512_bf16"}
    got = resolve("auto", "inference", flags=bf16_cpu, gpu=False, bf16_loses=spec.bf16_loses)
    assert got == ("float32" if spec.bf16_slower else "bfloat16")
    line = describe("auto", got, flags=bf16_cpu, bf16_loses=spec.bf16_loses)
    assert (f"but make bench measured {name} slower in bf16" in line) == spec.bf16_slower
    assert resolve("auto", "inference", flags=AVX2_ONLY, gpu=False, bf16_loses=spec.bf16_loses) == "float32"
    assert resolve("bfloat16", "inference", flags=bf16_cpu, gpu=False, bf16_loses=spec.bf16_loses) == "bfloat16"


def test_make_features_plans_auto_per_backbone(tmp_path, monkeypatch):
    from core.precision import FLAGS_ENV
    from extract import features
    from test_backbones import _fixed_inputs

    monkeypatch.setenv(FLAGS_ENV, "avx2,avx512_bf16")
    data = _fixed_inputs(tmp_path / "d")
    plans = {n: features.make_plan(features.Settings(data=data, backbone=n, weights="none", precision="auto"))
             for n in ("inception_v3", "mobilenet_v2_035")}
    assert plans["inception_v3"].precision == "bfloat16" and plans["mobilenet_v2_035"].precision == "float32"
    assert "-> float32 for inference" in plans["mobilenet_v2_035"].describe_precision()
    assert "make bench measured mobilenet_v2_035 slower in bf16" in plans["mobilenet_v2_035"].describe_precision()
    ens = features.make_plan(features.Settings(data=data, backbones="inception_v3:75,mobilenet_025:32",
                                               weights="none", precision="auto"))
    assert ens.precision == "float32"  # one member loses in bf16: the trunk runs in float32


def test_the_bench_confirms_auto_for_every_registered_backbone():
    """docs/bench_precision.json (make bench's per-backbone table, both precisions, on a CPU with native bf16):
    every entry is there, and what auto picks for it today is the faster of the two as measured (or a tie)."""
    from bench.backbones import NOISE
    from conftest import ROOT
    from core.precision import resolve
    from extract import backbones

    with open(os.path.join(ROOT, "docs", "bench_precision.json")) as f:
        bench = json.load(f)
    assert bench["bf16"] and bench["cpu_bf16_flags"], "the table must come from a CPU with native bf16"
    assert set(bench["backbones"]) == set(backbones.REGISTRY)
    for name, rows in bench["backbones"].items():
        spec = backbones.get(name)
        auto = resolve("auto", "inference", flags=set(bench["cpu_bf16_flags"]), gpu=False,
                       bf16_loses=spec.bf16_loses)
        for r in rows:
            ratio = r["bf16_speedup"]
            faster = "bfloat16" if ratio > 1 else "float32"
            assert auto == faster or abs(ratio - 1) <= NOISE, (name, r["size"], ratio, auto)


def test_precision_cpu_flags_plays_either_kind_of_cpu(monkeypatch):
    from core.precision import FLAGS_ENV, cpu_flags, describe, resolve

    monkeypatch.setenv(FLAGS_ENV, "avx2,avx512_bf16")
    assert cpu_flags() == {"avx2", "avx512_bf16"} and resolve("auto", "inference", gpu=False) == "bfloat16"
    assert f"{FLAGS_ENV}=avx2,avx512_bf16" in describe("auto", "bfloat16")
    for none in ("none", ""):
        monkeypatch.setenv(FLAGS_ENV, none)
        assert cpu_flags() == set() and resolve("auto", "inference", gpu=False) == "float32"
    assert "avx512_bf16" not in cpu_flags() and cpu_flags("/nonexistent") == set()  # a given file is read as it is
    monkeypatch.delenv(FLAGS_ENV)
    real = cpu_flags()
    assert real == cpu_flags("/proc/cpuinfo") or not os.path.exists("/proc/cpuinfo")


# -- the converter ------------------------------------------------------------------------------------------------
def small_model():
    """A conv trunk with a nested float32 `head` model, as stage 3 builds its network (at toy size)."""
    import keras

    from core.precision import building

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess")(inp)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    h_in = keras.Input((6, 6, 16), name="features")
    h = keras.layers.Dense(1, activation="sigmoid", name="head_output")(keras.layers.Flatten()(h_in))
    with building("float32"):
        head = keras.Model(h_in, h, name="head")
    return keras.Model(inp, head(x), name="net")


def policies(model) -> dict:
    from core.precision import _all_layers

    return {l.name: l.dtype_policy.name for l in _all_layers(model) if l.weights or l.name == "preprocess"}


def test_convert_rebuilds_every_layer_in_the_precision_and_copies_the_weights():
    from core.precision import convert, policy_of

    m32 = small_model()
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype("float32")
    p32 = m32(x).numpy()
    bf = convert(m32, "bfloat16")
    assert set(policies(bf).values()) == {"mixed_bfloat16"}  # nested model too
    assert policy_of(bf) == "bfloat16" and policy_of(m32) == "float32"
    for a, b in zip(bf.weights, m32.weights):
        assert a.dtype == "float32" and np.array_equal(a.numpy(), b.numpy())  # variables stay float32, copied
    p_bf = bf(x).numpy()
    assert not np.array_equal(p_bf, p32) and np.abs(p_bf - p32).max() < 2e-2  # bf16 rounding, nothing more
    kept = convert(m32, "bfloat16", keep=("head",))
    assert policies(kept)["conv"] == "mixed_bfloat16" and policies(kept)["head_output"] == "float32"
    back = convert(bf, "float32")
    assert set(policies(back).values()) == {"float32"}
    np.testing.assert_array_equal(back(x).numpy(), p32)  # the round trip is exact: weights never left float32


# -- a bf16 cache -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_cache(train_dir, tmp_path_factory):
    """`make features PRECISION=bfloat16 LAYERS=mixed6,mixed7 AUG_VIEWS=2` of the shared train set."""
    path = tmp_path_factory.mktemp("bf16") / "features.h5"
    return build_cache(train_dir, path, "--layers", "mixed6,mixed7", "--aug-views", str(K), precision="bfloat16")


def cache_state_for(path, data, **settings):
    from extract import features

    s = features.Settings(data=str(data), features=str(path), img_size=IMG, weights="none", batch=16, **settings)
    return cache_state(str(path), fingerprint(features.resolve_config(features.make_plan(s))))


@pytest.mark.slow
def test_a_bf16_cache_records_its_precision_and_is_stale_for_float32(bf16_cache, cache_path, train_dir):
    with open_cache(bf16_cache) as c:
        assert c.precision == "bfloat16" and json.loads(c.f.attrs["config"])["precision"] == "bfloat16"
        assert c.provenance["precision_requested"] == "bfloat16" and c.provenance["cpu_native_bf16"] in (True, False)
        assert c.features("mixed7").dtype == np.float32 and c.f["views/mixed6"].dtype == np.float32
    with open_cache(cache_path) as c:
        assert c.precision == "float32" and "precision" not in c.config  # a float32 cache keeps its old identity
    views = {"layers": ("mixed6", "mixed7"), "aug_views": K}
    assert cache_state_for(bf16_cache, train_dir, precision="bfloat16", **views) == "up-to-date"
    assert cache_state_for(bf16_cache, train_dir, precision="float32", **views) == "stale"
    assert cache_state_for(cache_path, train_dir, precision="float32") == "up-to-date"
    assert cache_state_for(cache_path, train_dir, precision="bfloat16") == "stale"


@pytest.mark.slow
def test_bf16_features_are_float32_features_to_bf16_accuracy(bf16_cache, cache_path):
    from core.precision import feature_error

    with open_cache(bf16_cache) as bf, open_cache(cache_path) as f32:
        assert bf.paths == f32.paths and np.array_equal(bf.split, f32.split)
        rows = np.arange(len(bf))
        a, b = bf.read(rows, "mixed7"), f32.read(rows, "mixed7")
    e = feature_error(a, b)
    print(f"bf16 vs float32 mixed7 features: {e}")
    assert e["max_abs"] > 0  # computed in bf16 indeed: a float32 run gives the same bits
    assert 1e-4 < e["rms_rel"] < 3e-2 and e["max_rel"] < 3e-2  # bf16's 8-bit mantissa: ~1e-2, not another network


# -- stage 3 on a bf16 cache -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_head(bf16_cache, tmp_path_factory):
    from classify.__main__ import main

    d = tmp_path_factory.mktemp("bf16_head")
    assert main(head_args(bf16_cache, d, "--layer", "mixed7")) == 0
    return d


def finetune_settings(train_dir, features, head_dir, model_dir, **extra):
    from finetune.run import Settings

    return Settings(data=str(train_dir), features=str(features), head_dir=str(head_dir), model_dir=str(model_dir),
                    batch=16, epochs=1, lr=1e-4, **extra)


def check_bf16_model(model_dir):
    from core.precision import policy_of
    from finetune.record import load_model

    m = json.loads((model_dir / "metrics.json").read_text())
    assert m["equivalence"]["max_abs_diff"] <= 1e-3
    assert m["config"]["precision"] == "bfloat16" and m["config"]["training_precision"] == "bfloat16"
    assert m["config"]["cache_precision"] == "bfloat16" and m["config"]["precision_requested"] == "bfloat16"
    model, meta = load_model(str(model_dir / "model.keras"))
    assert meta["precision"] == "bfloat16" and meta["precision_used"] == "bfloat16"
    assert policy_of(model) == "bfloat16"
    assert model.get_layer("head").get_layer("head_output").dtype_policy.name == "float32"  # the head stays float32
    return m


@pytest.mark.slow
@pytest.mark.parametrize("from_cache", [True, False], ids=["cached", "end-to-end"])
def test_stage3_on_a_bf16_cache_exports_a_bf16_model(bf16_cache, bf16_head, train_dir, tmp_path, capsys, from_cache):
    from finetune.record import read_meta
    from finetune.run import finetune

    s = finetune_settings(train_dir, bf16_cache, bf16_head, tmp_path / "ft", from_cache=from_cache,
                          precision="bfloat16")
    assert finetune(s) == 0
    out = capsys.readouterr().out
    assert "precision: PRECISION=bfloat16 -> bfloat16" in out and "equivalence:" in out
    m = check_bf16_model(tmp_path / "ft")
    fp = m["config"]["run_fingerprint"]
    if not from_cache:
        return  # the float32 run below goes through the same run.py code on either path: once is enough
    assert m["export_check"]["max_abs_diff"] <= 1e-3
    # The training precision is part of the run's identity: float32 is another run.
    s32 = finetune_settings(train_dir, bf16_cache, bf16_head, tmp_path / "ft32", from_cache=from_cache,
                            precision="float32")
    assert finetune(s32) == 0
    m32 = json.loads((tmp_path / "ft32" / "metrics.json").read_text())
    assert m32["config"]["run_fingerprint"] != fp and m32["config"]["precision"] == "float32"
    assert m32["config"]["cache_precision"] == "bfloat16" and m32["equivalence"]["max_abs_diff"] <= 1e-3
    assert m32["export_check"]["max_abs_diff"] <= 1e-3  # checked in the cache's precision
    assert read_meta(str(tmp_path / "ft32" / "model.keras"))["precision"] == "float32"


@pytest.mark.slow
def test_predict_uses_the_models_precision_unless_told(bf16_cache, bf16_head, train_dir, tmp_path, capsys):
    from finetune.predictions import write_predictions
    from finetune.run import finetune

    assert finetune(finetune_settings(train_dir, bf16_cache, bf16_head, tmp_path / "ft", from_cache=True,
                                      precision="bfloat16")) == 0
    folder = tmp_path / "in"
    folder.mkdir()
    for name in sorted(os.listdir(train_dir))[:24]:
        if name.endswith(".jpg"):
            shutil.copy(train_dir / name, folder / name)
    model = str(tmp_path / "ft" / "model.keras")
    capsys.readouterr()
    probs = {}
    for asked in ("", "float32"):
        out = tmp_path / f"p{asked}.csv"
        # Raw P: the recorded temperature (T < 1 on this easy set) would magnify bf16's rounding of the logit 1/T-fold
        assert write_predictions(str(folder), model, str(out), batch=8, calibrate=False, precision=asked) == 0
        assert f"PRECISION={asked or 'bfloat16'}" in capsys.readouterr().out
        with open(out) as f:
            probs[asked] = {r["path"]: float(r["prob_dog"]) for r in csv.DictReader(f)}
    assert probs[""].keys() == probs["float32"].keys() and len(probs[""]) >= 10
    d = np.array([abs(probs[""][k] - probs["float32"][k]) for k in probs[""]])
    print(f"predict bfloat16 vs float32 on {len(d)} images: max |dP| {d.max():.3g}")
    # bf16 rounds every layer of the backbone (features ~1e-2 relative): P moves by a few hundredths, never the call
    assert 0 < d.max() < 0.1
    p32 = np.array([probs["float32"][k] for k in probs[""]])
    p16 = np.array([probs[""][k] for k in probs[""]])
    sure = np.abs(p32 - 0.5) > 0.1
    assert sure.any() and np.array_equal(p16[sure] >= 0.5, p32[sure] >= 0.5)


# -- auto means "either is fine" ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_auto_on_a_bf16_cpu_keeps_a_float32_cache_its_head_and_model_and_an_explicit_bf16_rebuilds(
        cache_path, train_dir, tmp_path):
    from conftest import extract_args, run_module
    from core.precision import FLAGS_ENV

    cache = tmp_path / "features.h5"
    shutil.copy(cache_path, cache)  # made with PRECISION=float32 (conftest)
    bf16_cpu = {FLAGS_ENV: "avx512_bf16"}
    auto = [a for a in extract_args(train_dir, cache) if a not in ("--precision", "float32")]
    r = run_module("extract", *auto, "--precision", "auto", env=bf16_cpu)
    assert r.returncode == 0 and "made in float32, which PRECISION=auto accepts); nothing to do" in r.stdout, r.stdout
    head = tmp_path / "head"
    r = run_module("classify", *head_args(cache, head), env=bf16_cpu)
    assert r.returncode == 0 and "up to date" not in r.stdout, r.stderr[-2000:]
    r = run_module("classify", *head_args(cache, head), env=bf16_cpu)
    assert r.returncode == 0 and f"{head}: up to date" in r.stdout and "baseline:" not in r.stdout, r.stdout
    r = run_module("classify", *head_args(cache, head, "--epochs", "5"), env=bf16_cpu)  # any change retrains
    assert r.returncode == 0 and "up to date" not in r.stdout and "baseline:" in r.stdout, r.stdout
    r = run_module("finetune", "--data", train_dir, "--features", cache, "--head-dir", head, "--model-dir",
                   tmp_path / "ft", "--batch", "16", "--epochs", "1", "--precision", "auto", env=bf16_cpu)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PRECISION=auto -> float32 for training" in r.stdout, r.stdout  # the fast one for training there
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["config"]["cache_precision"] == "float32" and m["reload_max_abs_diff"] <= 1e-3
    r = run_module("extract", *auto, "--precision", "bfloat16", env=bf16_cpu)  # explicit and different: rebuilt
    assert r.returncode == 0 and "stale (precision float32 -> bfloat16); rebuilding" in r.stdout, r.stdout
    with open_cache(cache) as c:
        assert c.precision == "bfloat16"
