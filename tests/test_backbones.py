"""The backbone registry: every entry end to end, its preprocessing against Keras', its weights check, stable names,
and InceptionV3 caches made before the registry still up to date. Adding an entry to extract/backbones.py adds it
to every parametrised test here."""
import csv
import json
import os

import numpy as np
import pytest

from conftest import ROOT, run_module
from core import WorkflowError
from extract import backbone, backbones

NAMES = list(backbones.REGISTRY)
# The fast tier builds one MobileNet width per version (and the old mobilenet_v2); the slow tier builds every width.
FAST_WIDTHS = ("mobilenet_v2", "mobilenet_025", "mobilenet_v2_035", "mobilenet_v3_small_minimalistic")


def tiered(names):
    return [n if not n.startswith("mobilenet") or n in FAST_WIDTHS else pytest.param(n, marks=pytest.mark.slow)
            for n in names]
PIXELS = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype("float32")


def _fixed_inputs(d):
    """12 files whose names and sizes alone make the inputs' identity (VERIFY=size); no decoding needed."""
    os.makedirs(d, exist_ok=True)
    for i in range(6):
        for c in ("cat", "dog"):
            with open(os.path.join(d, f"{c}.{i}.jpg"), "wb") as f:
                f.write(b"x" * (100 + 7 * i + (c == "dog")))
    return str(d)


# Fingerprints computed by the code before the registry (commit 01d0576, extract/features.resolve_config) for the
# inputs above: an InceptionV3 cache made then must still be up to date now.
BEFORE_REGISTRY = [
    ({}, "0b983b3792da0b65c546863680363944ca35991183d678bb877af74d641fd90f"),
    ({"layers": ("mixed6", "mixed7"), "aug_views": 2},
     "11290a222f06e8b425dbb9aab08f87b1b6d266a032362180314e34a2a66283cb"),
    ({"img_size": 75, "layers": ("mixed7", "mixed6")},
     "6718e9a17e12bf430624b444f31bfc0a8d236c8e3ff82f4b5b0c4081653ba7dc"),
]


# Fingerprints of MobileNetV2 and other no-argument entries computed by the code before entries took constructor
# arguments (commit dd1b05d) for the inputs above: such caches stay up to date.
BEFORE_ARGS = [
    ({"backbone": "mobilenet_v2"}, "c5e9e8a8416a69e889a99fa77485344780c1d6a87c70574aa9fdebb20fdecd03"),
    ({"backbone": "mobilenet_v2", "img_size": 96}, "754e23446b2bad8a175502c8da530223d6d8439111a81690f59e4c5a7260ac15"),
    ({"backbone": "mobilenet_v2", "img_size": 150, "aug_views": 2},
     "7610634bc75632bd5030fe7aedeb7bc6c684cd10fd30d492630caeea6b8c315c"),
    ({"backbone": "resnet50"}, "8ed944e741c3491c005724f996479cc1cb55dbdf9575f00c93fdcbeeac4c02a5"),
    ({"backbone": "efficientnet_v2b0", "img_size": 64},
     "89f60cc2563ef04e39c17efbc707ddc9c34293216430a30cf582c8240a65b2fb"),
]


@pytest.mark.parametrize("settings,before", BEFORE_REGISTRY + BEFORE_ARGS)
def test_caches_made_before_the_registry_or_its_arguments_keep_their_fingerprints(tmp_path, settings, before):
    """InceptionV3 caches from before the registry, and caches of entries without arguments from before entries took
    any: the same fingerprints, so they stay up to date."""
    from cache import fingerprint
    from extract import features

    s = features.Settings(data=_fixed_inputs(tmp_path / "d"), features=str(tmp_path / "f.h5"), weights="none",
                          precision="float32", **settings)
    assert fingerprint(features.resolve_config(features.make_plan(s))) == before


def _config(tmp_path, name, **settings):
    from extract import features

    s = features.Settings(data=_fixed_inputs(tmp_path / "d"), features=str(tmp_path / "f.h5"), backbone=name,
                          weights="none", precision="float32", **settings)
    return features.resolve_config(features.make_plan(s))


def test_two_widths_of_one_constructor_are_two_caches_and_stage_3_finds_each(tmp_path):
    """The bug of issue 31: an alpha-0.35 cache was rebuilt by stage 3 as alpha 1.0. The cache records the entry's
    name and arguments, and finetune.model.spec_of returns that exact entry."""
    from cache import fingerprint
    from finetune.model import check_recipe, spec_of

    configs = {n: _config(tmp_path, n) for n in ("mobilenet_v2", "mobilenet_v2_035", "mobilenet_v2_140",
                                                  "mobilenet_v3_small", "mobilenet_v3_small_minimalistic")}
    assert len({fingerprint(c) for c in configs.values()}) == len(configs)
    assert configs["mobilenet_v2_035"]["backbone_entry"] == "mobilenet_v2_035"
    assert configs["mobilenet_v2_035"]["backbone_args"] == {"alpha": 0.35}
    assert "backbone_entry" not in configs["mobilenet_v2"]  # no arguments: recorded as before
    for name, cfg in configs.items():
        assert spec_of(cfg).name == name
        check_recipe(cfg, "f.h5")
    edited = {**configs["mobilenet_v2_035"], "backbone_args": {"alpha": 0.5}}  # a registry edited since
    with pytest.raises(WorkflowError, match="backbone mobilenet_v2_035 was recorded as MobileNetV2 with arguments"):
        spec_of(edited)


MOBILENET = [n for n in NAMES if n.startswith("mobilenet")]
# End to end (slow): every entry whose layers or build differ; the other widths share their layer names, which
# test_every_mobilenet_builds_its_width_with_its_layers checks in every width.
END_TO_END = [n for n in NAMES if n not in MOBILENET] + [
    "mobilenet_025", "mobilenet_v2_035", "mobilenet_v3_small", "mobilenet_v3_large_minimalistic"]


@pytest.mark.parametrize("name", tiered(MOBILENET))
def test_every_mobilenet_builds_its_width_with_its_layers(name):
    """The arguments reach Keras (our build has the parameters of keras.applications called with them, and not
    those of the constructor's default), and the entry's feature layer, UNFREEZE_FROM and cut are in it."""
    import keras

    spec = backbones.get(name)
    ours = backbone.build_base(spec, spec.min_size, backbone.resolve_weights(spec, "none"))
    names = [l.name for l in ours.layers]
    assert {spec.feature_layer, spec.unfreeze_from, spec.cached_cut} <= set(names)
    assert names.index(spec.cached_cut) < names.index(spec.feature_layer)
    shape = (spec.min_size, spec.min_size, 3)
    ref = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=shape,
                                                        **dict(spec.args))
    assert ours.count_params() == ref.count_params()
    if spec.args:
        plain = getattr(keras.applications, spec.constructor)(include_top=False, weights=None, input_shape=shape)
        assert ours.count_params() != plain.count_params()


def _keras_asks_for(spec, size, monkeypatch):
    """(file name, hash) that keras.applications itself asks get_file for, building `spec` at `size` with imagenet."""
    import warnings

    import keras
    from keras.src.utils import file_utils

    asked = []

    def get_file(fname, origin, cache_subdir=None, file_hash=None, **kw):
        asked.append((fname, file_hash or "", origin))
        raise StopIteration  # stop before any download

    monkeypatch.setattr(file_utils, "get_file", get_file)
    with warnings.catch_warnings(), pytest.raises(StopIteration):
        warnings.simplefilter("ignore")  # Keras warns where it falls back to the 224-px file
        getattr(keras.applications, spec.constructor)(include_top=False, weights="imagenet",
                                                      input_shape=(size, size, 3), **dict(spec.args))
    return asked[0]


@pytest.mark.parametrize("name", tiered(MOBILENET))
def test_weights_file_per_size_follows_keras_own_rule(name, monkeypatch):
    """At a published size, a size Keras has no file for (it loads the 224-px one) and the default, the file (and
    hash, and URL) that resolve_weights looks for is the one keras.applications downloads."""
    spec = backbones.get(name)
    for size in (128, 100, 224) if spec.weight_sizes else (224, 100):
        fname, fhash, origin = _keras_asks_for(spec, size, monkeypatch)
        assert (spec.weights_file(size), spec.notop_hash, spec.url(size)) == (fname, fhash, origin), size


def test_the_offline_error_names_the_exact_missing_file(tmp_path, monkeypatch):
    import keras

    def offline(*a, **k):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    spec = backbones.get("mobilenet_v2_035")
    with pytest.raises(WorkflowError) as e:
        backbone.resolve_weights(spec, "imagenet", 160)
    msg = str(e.value)
    want = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_160_no_top.h5"
    assert f"WEIGHTS=imagenet: {want} (mobilenet_v2_035 at 160 px) is not in {tmp_path / 'keras' / 'models'}" in msg
    assert "MobileNetV2(alpha=0.35, include_top=False, input_shape=(160, 160, 3))" in msg and "\n" not in msg



def test_a_size_keras_publishes_no_imagenet_weights_for_is_refused_in_one_line():
    with pytest.raises(WorkflowError) as e:
        backbone.resolve_weights(backbones.get("mobilenet_025"), "imagenet", 96)  # v1 has no 96-px file
    assert str(e.value) == ("IMG_SIZE=96: Keras publishes ImageNet weights for mobilenet_025 at 128, 160, 192, 224 px "
                            "only; use one of those sizes, or WEIGHTS=none")
    assert backbone.resolve_weights(backbones.get("mobilenet_025"), "none", 96)["weights"] == "none"


@pytest.mark.parametrize("name,widths", [("mobilenet_v2_060", "MobileNetV2 only at alpha 0.35, 0.5, 0.75, 1.0, 1.3"),
                                         ("mobilenet_035", "MobileNet only at alpha 0.25, 0.5, 0.75, 1.0"),
                                         ("mobilenet_v3_small_075", "MobileNetV3 only at alpha 1.0")])
def test_a_width_keras_publishes_no_weights_for_is_refused_in_one_line(name, widths):
    with pytest.raises(WorkflowError) as e:
        backbones.get(name)
    assert f"BACKBONE={name}: Keras publishes ImageNet weights for {widths}" in str(e.value)
    assert "mobilenet_v2_035" in str(e.value) and "\n" not in str(e.value)


def test_empty_layers_with_views_take_the_backbones_cut(tmp_path):
    """`make features AUG_VIEWS=2` without LAYERS caches the feature layer and the cut (the demo's old LAYERS)."""
    from cache import fingerprint
    from extract import features

    s = features.Settings(data=_fixed_inputs(tmp_path / "d"), features=str(tmp_path / "f.h5"), weights="none",
                          precision="float32", img_size=75, aug_views=2)
    plan = features.make_plan(s)
    assert plan.layers == ("mixed7", "mixed6") and plan.img_size == 75
    with_views = dict(s.__dict__, layers=("mixed7", "mixed6"))
    assert fingerprint(features.resolve_config(plan)) == fingerprint(
        features.resolve_config(features.make_plan(features.Settings(**with_views))))


@pytest.mark.parametrize("name", NAMES)
def test_preprocessing_layer_equals_keras_preprocess_input(name):
    """The in-model layer computes what keras.applications.<family>.preprocess_input computes on the same pixels."""
    import importlib

    import keras

    spec = backbones.get(name)
    family = importlib.import_module(f"keras.applications.{spec.family}")
    want = np.asarray(family.preprocess_input(PIXELS.copy()))
    layer = backbone.preprocess_layer(spec)
    if spec.preprocessing == backbones.SELF:
        assert layer is None  # raw 0..255 in: the network's own first layers preprocess
        np.testing.assert_array_equal(want, PIXELS)  # and Keras' function is the identity for it
        return
    got = keras.ops.convert_to_numpy(layer(keras.ops.convert_to_tensor(PIXELS)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert not np.allclose(got, PIXELS)


def test_each_preprocessing_kind_is_registered():
    kinds = {b.preprocessing for b in backbones.REGISTRY.values()}
    assert kinds == {backbones.INCEPTION, backbones.CAFFE, backbones.TORCH, backbones.SELF}


@pytest.mark.parametrize("name", tiered(NAMES))
def test_wrong_weights_file_with_the_right_name_is_refused(tmp_path, name):
    spec = backbones.get(name)
    bad = tmp_path / spec.weights_file(spec.min_size)
    bad.write_bytes(b"not the weights" * 100)
    with pytest.raises(WorkflowError) as e:
        weights = backbone.resolve_weights(spec, str(bad), spec.min_size)
        # Keras publishes no hash for this file: loading it is the check, and it must fail as cleanly
        assert not spec.notop_hash
        backbone.build_base(spec, spec.min_size, weights)
    msg = str(e.value)
    assert str(bad) in msg and spec.weights_file(spec.min_size) in msg
    if spec.notop_hash:
        assert spec.notop_hash in msg and "delete it and fetch it again" in msg and "WEIGHTS=none" in msg
    else:
        assert "not loadable" in msg and "WEIGHTS=imagenet" in msg


def test_unknown_backbone_lists_the_registry():
    with pytest.raises(WorkflowError, match="BACKBONE=alexnet: not registered; choose one of inception_v3, xception"):
        backbones.get("alexnet")


NAMES_SCRIPT = ("import json, sys; from extract import backbone, backbones; "
                "b = backbone.build_base(backbones.get(sys.argv[1]), 71, backbone.resolve_weights("
                "backbones.get(sys.argv[1]), 'none')); print(json.dumps([l.name for l in b.layers]))")


@pytest.mark.slow
def test_unnamed_layers_get_the_same_names_in_every_process():
    """Xception's residual adds have no names: after other builds in this process, they are numbered as in a fresh
    process, so UNFREEZE_FROM and the cached cut resolve to the same layer everywhere."""
    import subprocess
    import sys

    spec = backbones.get("xception")
    backbone.build_base(backbones.get("resnet50"), 32, backbone.resolve_weights(spec, "none"))  # uses add, add_1, ..
    here = [l.name for l in backbone.build_base(spec, 71, backbone.resolve_weights(spec, "none")).layers]
    r = subprocess.run([sys.executable, "-c", NAMES_SCRIPT, "xception"], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == here
    assert "add_11" in here  # the unnamed adds are there, and numbered from zero


def _run(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.mark.slow
@pytest.mark.parametrize("name", END_TO_END)
def test_every_backbone_end_to_end_at_its_minimum_size(name, tmp_path):
    """features -> head -> finetune EPOCHS=1 (equivalence <= 1e-3) -> predict, WEIGHTS=none, PRECISION=float32."""
    from classify.__main__ import main as head_main
    from extract.__main__ import main as extract_main
    from extract.synth import make_dataset
    from finetune.__main__ import main as finetune_main
    from finetune.predict import main as predict_main

    spec = backbones.get(name)
    data, test = tmp_path / "train", tmp_path / "test"
    make_dataset(data, n=24, layout="kaggle", seed=3, junk=False)
    make_dataset(test, n=4, layout="unlabelled", seed=4, junk=False)
    features, head_dir, model_dir = tmp_path / "f.h5", tmp_path / "head", tmp_path / "ft"
    assert _run(extract_main, ["--data", str(data), "--features", str(features), "--backbone", name,
                               "--img-size", str(spec.min_size), "--weights", "none", "--batch", "8",
                               "--precision", "float32"]) == 0
    from cache import open_cache

    with open_cache(str(features)) as c:
        assert (c.config["backbone"], c.layer, c.config["image_size"]) == (spec.constructor, spec.feature_layer,
                                                                           spec.min_size)
    assert _run(head_main, ["--features", str(features), "--head-dir", str(head_dir), "--epochs", "1",
                            "--batch", "8", "--head", "pooled", "--units", "0"]) == 0
    metrics = json.loads((head_dir / "metrics.json").read_text())
    assert (metrics["cache"]["backbone"], metrics["cache"]["image_size"], metrics["cache"]["layer"]) == (
        spec.constructor, spec.min_size, spec.feature_layer)
    assert metrics["cache"]["weights_sha256"] == backbone.resolve_weights(spec, "none")["weights_sha256"]
    assert _run(finetune_main, ["--data", str(data), "--features", str(features), "--head-dir", str(head_dir),
                                "--model-dir", str(model_dir), "--epochs", "1", "--batch", "8",
                                "--precision", "float32"]) == 0
    ft = json.loads((model_dir / "metrics.json").read_text())
    assert ft["reload_max_abs_diff"] <= 1e-3
    assert ft["config"]["unfreeze_from"] == spec.unfreeze_from and ft["config"]["backbone"] == spec.constructor
    from finetune.record import read_meta

    meta = read_meta(str(model_dir / "model.keras"))["config"]  # workflow.json names what made the model
    assert (meta["backbone"], meta["image_size"], meta["layer"], meta["weights_sha256"]) == (
        spec.constructor, spec.min_size, spec.feature_layer, metrics["cache"]["weights_sha256"])
    assert backbones.of_record(meta).name == name  # the exact entry (width) that made the cache
    out = tmp_path / "pred.csv"
    assert _run(predict_main, ["--input", str(test), "--model", str(model_dir / "model.keras"), "--out", str(out),
                               "--precision", "float32"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 4 and all(float(r["prob_cat"]) + float(r["prob_dog"]) == pytest.approx(1.0) for r in rows)
    assert all(0.0 <= float(r["prob_dog"]) <= 1.0 and r["label"] in ("cat", "dog") for r in rows)


@pytest.mark.parametrize("name", [n for n in NAMES if not backbones.get(n).cached_cut])
def test_from_cache_on_a_backbone_without_a_cut_says_so_in_one_line(name, tmp_path):
    from extract import features

    s = features.Settings(data=_fixed_inputs(tmp_path / "d"), features=str(tmp_path / "f.h5"), backbone=name,
                          weights="none", precision="float32", aug_views=2)
    with pytest.raises(WorkflowError, match=f"{name} has no cut the cached path can use") as e:
        features.make_plan(s)
    assert "\n" not in str(e.value)


ENSEMBLE = "inception_v3:75,xception:71,resnet50:32"  # each at its minimum size: one decode at 75, two resizes


@pytest.mark.slow
def test_ensemble_end_to_end_exported_model_on_raw_images_equals_its_head_on_the_cache(tmp_path):
    """BACKBONES=inception_v3,xception,resnet50 + HEAD=concat: one cache of concatenated pooled features, the head,
    `make finetune EPOCHS=1`, and the exported model.keras on raw images == its own head on the cached features."""
    import keras

    from cache import SPLIT_VAL, open_cache
    from classify.__main__ import main as head_main
    from extract.__main__ import main as extract_main
    from extract.images import load_image
    from extract.synth import make_dataset
    from finetune.__main__ import main as finetune_main
    from finetune.record import load_model, read_meta

    data, features, head_dir, model_dir = tmp_path / "train", tmp_path / "f.h5", tmp_path / "head", tmp_path / "ft"
    make_dataset(data, n=24, layout="kaggle", seed=3, junk=False)
    assert _run(extract_main, ["--data", str(data), "--features", str(features), "--backbones", ENSEMBLE,
                               "--weights", "none", "--batch", "8", "--precision", "float32"]) == 0
    with open_cache(str(features)) as c:
        members = c.config["backbones"]
        assert [(m["name"], m["image_size"], m["layer"]) for m in members] == [
            ("inception_v3", 75, "mixed7"), ("xception", 71, "block14_sepconv2_act"),
            ("resnet50", 32, "conv5_block3_out")]
        assert c.config["image_size"] == 75 and c.feature_shape() == (1, 1, 768 + 2048 + 2048)
    assert _run(head_main, ["--features", str(features), "--head-dir", str(head_dir), "--epochs", "2", "--batch", "8",
                            "--head", "concat", "--units", "0", "--dropout", "0.5"]) == 0
    head_m = json.loads((head_dir / "metrics.json").read_text())
    assert head_m["config"]["head"]["kind"] == "concat" and head_m["baseline"]["val_accuracy"] is not None
    assert _run(finetune_main, ["--data", str(data), "--features", str(features), "--head-dir", str(head_dir),
                                "--model-dir", str(model_dir), "--epochs", "1", "--batch", "8",
                                "--precision", "float32"]) == 0
    ft = json.loads((model_dir / "metrics.json").read_text())
    assert ft["reload_max_abs_diff"] <= 1e-3 and ft["trainable_layers"] == ["concat", "head"]
    assert [m["name"] for m in read_meta(str(model_dir / "model.keras"))["config"]["backbones"]] == [
        "inception_v3", "xception", "resnet50"]

    from classify.sweep.__main__ import main as sweep_main
    from report.__main__ import main as report_main

    # the sweep and the report read the ensemble cache like any other
    assert _run(sweep_main, ["--features", str(features), "--sweep-dir", str(tmp_path / "sweep"), "--trials", "2",
                             "--epochs", "1"]) == 0
    assert (tmp_path / "sweep" / "best" / "metrics.json").exists()
    assert _run(report_main, ["--features", str(features), "--head-dir", str(head_dir), "--data", str(data),
                              "--report-dir", str(tmp_path / "report"), "--model-dir", str(model_dir)]) == 0
    page = (tmp_path / "report" / "report.html").read_text()
    assert "ensemble" in page and all(f"{n} {s} px {m}" in page for n, s, m in (
        ("inception_v3", 75, "mixed7"), ("xception", 71, "block14_sepconv2_act"), ("resnet50", 32, "conv5_block3_out")))

    # a fresh load: the branches, their resizes and the head all serialised
    model, _ = load_model(str(model_dir / "model.keras"), "float32")
    with open_cache(str(features)) as c:
        rows = c.rows(SPLIT_VAL)
        x = np.stack([load_image(os.path.join(str(data), c.paths[i]), 75) for i in rows]).astype("float32")
        cached = c.read(rows)
    on_images = keras.ops.convert_to_numpy(model(x, training=False)).ravel()
    on_cache = keras.ops.convert_to_numpy(model.get_layer("head")(cached, training=False)).ravel()
    np.testing.assert_allclose(on_images, on_cache, atol=1e-3)
    assert len(rows) >= 4 and np.ptp(on_cache) > 0  # not a constant: the check can tell images apart


@pytest.mark.slow
def test_cached_finetuning_on_another_backbone_cuts_at_its_registered_layer(tmp_path):
    """FROM_CACHE=1 on xception (whose residual adds have no names): AUG_VIEWS=2 with LAYERS empty caches its
    feature layer and its cut; the cached block reproduces the head and the export check passes, both <= 1e-3."""
    from cache import open_cache
    from classify.__main__ import main as head_main
    from extract.__main__ import main as extract_main
    from extract.synth import make_dataset
    from finetune.__main__ import main as finetune_main

    spec = backbones.get("xception")
    data, features, head_dir, model_dir = tmp_path / "train", tmp_path / "f.h5", tmp_path / "head", tmp_path / "ft"
    make_dataset(data, n=24, layout="kaggle", seed=3, junk=False)
    assert _run(extract_main, ["--data", str(data), "--features", str(features), "--backbone", "xception",
                               "--img-size", str(spec.min_size), "--weights", "none", "--batch", "8",
                               "--aug-views", "2", "--precision", "float32"]) == 0
    with open_cache(str(features)) as c:
        assert c.layers == [spec.feature_layer, spec.cached_cut] and c.n_views(spec.cached_cut) == 2
    assert _run(head_main, ["--features", str(features), "--head-dir", str(head_dir), "--epochs", "1",
                            "--batch", "8", "--head", "pooled", "--units", "0"]) == 0
    assert _run(finetune_main, ["--data", str(data), "--features", str(features), "--head-dir", str(head_dir),
                                "--model-dir", str(model_dir), "--epochs", "1", "--batch", "8", "--from-cache", "1",
                                "--precision", "float32"]) == 0
    ft = json.loads((model_dir / "metrics.json").read_text())
    assert ft["config"]["unfreeze_from"] == spec.cached_cut and ft["config"]["path"] == "cached"
    assert ft["reload_max_abs_diff"] <= 1e-3 and ft["export_check"]["max_abs_diff"] <= 1e-3
    assert "block14_sepconv2" in ft["trainable_layers"] and "block14_sepconv1" not in ft["trainable_layers"]


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if not backbones.get(n).cached_cut])
def test_finetune_from_cache_without_a_cut_exits_2_in_one_line(name, tmp_path, capsys):
    from conftest import error_lines
    from extract.__main__ import main as extract_main
    from extract.synth import make_dataset
    from finetune.__main__ import main as finetune_main

    data, features = tmp_path / "train", tmp_path / "f.h5"
    make_dataset(data, n=8, layout="kaggle", seed=3, junk=False)
    assert _run(extract_main, ["--data", str(data), "--features", str(features), "--backbone", name, "--img-size",
                               str(backbones.get(name).min_size), "--weights", "none", "--precision", "float32"]) == 0
    capsys.readouterr()
    assert _run(finetune_main, ["--data", str(data), "--features", str(features), "--head-dir", str(tmp_path / "h"),
                                "--model-dir", str(tmp_path / "m"), "--from-cache", "1", "--precision", "float32"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [l for l in err.splitlines() if l.strip()] and len(error_lines(err)) == 1, err
    assert f"FROM_CACHE=1: {name} has no cut the cached path can use" in err and "FROM_CACHE=0" in err


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_a_weights_file_loads_into_the_model_with_preprocessing_in_front(name, tmp_path):
    """WEIGHTS=<file>: the network with our preprocessing layer in front holds the file's weights, and on raw pixels
    computes what keras.applications computes on `preprocess_input` of them (float32)."""
    import importlib

    import keras

    spec = backbones.get(name)
    shape = (spec.min_size, spec.min_size, 3)
    with _float32():
        app = backbone.constructor(spec)(include_top=False, weights=None, input_shape=shape)
        path = str(tmp_path / f"{name}.weights.h5")  # not notop_file: no hash to check, loading is the test
        app.save_weights(path)
        base = backbone.build_base(spec, spec.min_size, backbone.resolve_weights(spec, path))
    ours = [w.numpy() for l in base.layers if l.name != "preprocess" for w in l.weights]
    theirs = [w.numpy() for l in app.layers for w in l.weights]
    assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    x = np.random.default_rng(1).integers(0, 256, (2,) + shape).astype("float32")
    family = importlib.import_module(f"keras.applications.{spec.family}")
    want = keras.ops.convert_to_numpy(app(family.preprocess_input(x.copy()), training=False))
    got = keras.ops.convert_to_numpy(base(x, training=False))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def _float32():
    from core.precision import building

    return building("float32")
