"""The real-data tier: real photos and real ImageNet weights (../shared/real, read-only; the project commits none).

Random weights cannot see a broken preprocessing, BatchNorm let loose in fine-tuning, a calibration that does not
generalise, or a label-issue / near-duplicate finder that only works on synthetic blobs; real photos with real
MobileNet weights can. Each stage runs once per data set (module-scoped fixtures, in this process) at the weights'
own size, 224 px, with the small widths the laptop user picks: MobileNetV2 alpha 0.35 on cats and dogs, MobileNet
alpha 0.25 on the flowers.

Where ../shared/real is missing (a fresh clone) the tier skips with one reason; under CI=true it fails instead.
"""
import csv
import io
import json
import os
import shutil

import numpy as np
import pytest

from conftest import ROOT

REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "real"))
V2_035 = os.path.join(REAL, "weights", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5")
V1_025 = os.path.join(REAL, "weights", "mobilenet_2_5_224_tf_no_top.h5")
SIZE = 224  # the size both weight files were published for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def real_data():
    """Skip (or, under CI, fail) in one line where the real data is not beside the repository."""
    missing = [p for p in (os.path.join(REAL, "catsdogs"), os.path.join(REAL, "flowers"), V2_035, V1_025)
               if not os.path.exists(p)]
    if missing:
        msg = (f"real test data not found: {missing[0]} (the tier reads ../shared/real beside the repository; "
               f"see its README.md)")
        if os.environ.get("CI"):
            pytest.fail(f"CI: {msg}; CI must provide ../shared/real")
        pytest.skip(msg)


def _run(main, argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _features(data, out, backbone_name, weights, *extra):
    from extract.__main__ import main

    assert _run(main, ["--data", str(data), "--features", str(out), "--backbone", backbone_name, "--weights", weights,
                       "--img-size", str(SIZE), "--batch", "32", "--precision", "float32", *extra]) == 0
    return out


def _head(features, head_dir, *extra):
    from classify.__main__ import main

    assert _run(main, ["--features", str(features), "--head-dir", str(head_dir), "--seed", "0", *extra]) == 0
    with open(os.path.join(head_dir, "metrics.json")) as f:
        return json.load(f)


def _val_accuracy(metrics, which):
    return metrics[which]["val_accuracy"]


# ---------------------------------------------------------------------------------------------- cats and dogs

HEAD = ("--head", "pooled", "--epochs", "20", "--lr", "1e-3")  # the laptop head: average pool -> Dense(1024) -> out


@pytest.fixture(scope="module")
def cd(tmp_path_factory):
    """make features (feature layer + the cached cut) -> make head on the 400 real cats and dogs."""
    d = tmp_path_factory.mktemp("catsdogs")
    features = _features(os.path.join(REAL, "catsdogs"), d / "features.h5", "mobilenet_v2_035", V2_035,
                         "--layers", "out_relu,block_15_add")
    metrics = _head(features, d / "head", *HEAD)
    return {"dir": d, "data": os.path.join(REAL, "catsdogs"), "features": features, "head_dir": d / "head",
            "metrics": metrics}


def _finetune(cd, name, *extra):
    from finetune.__main__ import main

    model_dir = cd["dir"] / name
    assert _run(main, ["--data", cd["data"], "--features", str(cd["features"]), "--head-dir", str(cd["head_dir"]),
                       "--model-dir", str(model_dir), "--epochs", "2", "--batch", "32", "--seed", "0",
                       "--precision", "float32", *extra]) == 0
    with open(model_dir / "metrics.json") as f:
        return model_dir, json.load(f)


@pytest.fixture(scope="module")
def cd_end_to_end(cd):
    return _finetune(cd, "ft_end_to_end")


@pytest.fixture(scope="module")
def cd_cached(cd):
    return _finetune(cd, "ft_cached", "--from-cache", "1")


def test_catsdogs_head_and_baseline_learn_from_real_photos(cd):
    m = cd["metrics"]
    print(f"catsdogs: head val accuracy {_val_accuracy(m, 'head'):.4f}, baseline {_val_accuracy(m, 'baseline'):.4f}")
    assert _val_accuracy(m, "head") >= 0.90 and _val_accuracy(m, "baseline") >= 0.90
    assert m["cache"]["backbone_entry"] == "mobilenet_v2_035" and m["cache"]["backbone_args"] == {"alpha": 0.35}


def _no_worse_than_the_head(ft, head_acc, n_val):
    """Fine-tuning must not lose more than the noise of n_val images: two binomial standard errors of the head's
    accuracy (0.04 at 0.95 on 80 images, three images)."""
    noise = 2 * np.sqrt(head_acc * (1 - head_acc) / n_val)
    return ft["after"]["accuracy"] >= head_acc - noise


@pytest.mark.parametrize("path", ["end_to_end", "cached"])
def test_catsdogs_finetuning_keeps_what_the_head_learned(cd, path, request):
    """Both stage-3 paths on the alpha-0.35 entry (the width the old registry rebuilt as alpha 1.0): the equivalence
    check holds at 1e-3 with real weights, and the fine-tuned model is no worse than the head beyond the noise."""
    _, ft = request.getfixturevalue(f"cd_{path}")
    head_acc = _val_accuracy(cd["metrics"], "head")
    print(f"catsdogs {path}: equivalence max |diff| {ft['reload_max_abs_diff']:.2e}, val accuracy "
          f"{ft['before']['accuracy']:.4f} -> {ft['after']['accuracy']:.4f} (head {head_acc:.4f}), log loss "
          f"{ft['before']['log_loss']:.4f} -> {ft['after']['log_loss']:.4f}")
    assert ft["reload_max_abs_diff"] <= 1e-3
    assert ft["config"]["backbone_entry"] == "mobilenet_v2_035" and ft["config"]["unfreeze_from"] == "block_15_add"
    assert _no_worse_than_the_head(ft, head_acc, ft["after"]["n"])
    if path == "cached":
        assert ft["export_check"]["max_abs_diff"] <= 1e-3


def _val_images(cd, out):
    """The val split's photos, copied into `out` under their own names (make predict's INPUT)."""
    from cache import SPLIT_VAL, open_cache

    os.makedirs(out, exist_ok=True)
    with open_cache(str(cd["features"])) as c:
        names = [c.paths[i] for i in c.rows(SPLIT_VAL)]
    for n in names:
        shutil.copy(os.path.join(cd["data"], n), os.path.join(out, n))
    return names


def test_catsdogs_predict_on_real_val_photos(cd, cd_end_to_end):
    from finetune.predict import main

    model_dir, _ = cd_end_to_end
    val = cd["dir"] / "val_photos"
    names = _val_images(cd, val)
    out = cd["dir"] / "predictions.csv"
    assert _run(main, ["--input", str(val), "--model", str(model_dir / "model.keras"), "--out", str(out),
                       "--precision", "float32"]) == 0
    rows = list(csv.DictReader(open(out)))
    right = sum(r["label"] == os.path.basename(r["path"]).split(".")[0] for r in rows)
    print(f"catsdogs predict: {right}/{len(rows)} val photos right")
    assert len(rows) == len(names) and right / len(rows) >= 0.90
    assert all(float(r["prob_cat"]) + float(r["prob_dog"]) == pytest.approx(1.0) for r in rows)


def test_catsdogs_export_proves_itself_on_real_photos(cd, cd_cached):
    from export.__main__ import main

    model_dir, _ = cd_cached
    export_dir = cd["dir"] / "export"
    assert _run(main, ["--model", str(model_dir / "model.keras"), "--format", "savedmodel", "--export-dir",
                       str(export_dir), "--data", cd["data"], "--features", str(cd["features"])]) == 0
    with open(export_dir / "savedmodel.json") as f:
        proof = json.load(f)["proof"]
    print(f"catsdogs export: {proof['n']} val photos, max |diff| {proof['max_abs_diff']:.2e}, accuracy "
          f"{proof['export']['accuracy']:.4f}")
    assert proof["passed"] and proof["n"] == 80 and proof["export"]["accuracy"] >= 0.90


def test_calibration_on_real_confidences_lowers_log_loss_on_rows_it_did_not_see(cd):
    """Cross-fitted: the temperature fitted on one half of the val rows scores the other half, both ways round; the
    log loss over all val rows, each scored by a temperature that never saw it, is lower than uncalibrated."""
    import keras

    from cache import SPLIT_VAL, open_cache
    from classify.calibrate import apply_temperature, fit_temperature, log_loss
    from classify.head import probabilities

    with open_cache(str(cd["features"])) as c:
        rows = c.rows(SPLIT_VAL)
        x, y = c.read(rows), c.labels[rows]
    head = keras.saving.load_model(str(cd["head_dir"] / "head.keras"), compile=False)
    p = probabilities(head.predict(x, verbose=0))
    order = np.random.default_rng(0).permutation(len(y))
    halves = order[: len(y) // 2], order[len(y) // 2:]
    calibrated = np.empty_like(p)
    for fit_on, test_on in (halves, halves[::-1]):
        t = fit_temperature(y[fit_on], p[fit_on])["temperature"]
        calibrated[test_on] = apply_temperature(p[test_on], t)
        print(f"calibration: T={t:.3f} fitted on {len(fit_on)} val rows; on the other {len(test_on)}: log loss "
              f"{log_loss(y[test_on], p[test_on]):.4f} -> {log_loss(y[test_on], calibrated[test_on]):.4f}")
        assert 0.5 <= t <= 5.0  # a sane temperature: neither inverted nor flattening every probability
    before, after = log_loss(y, p), log_loss(y, calibrated)
    print(f"calibration, cross-fitted on {len(y)} val rows: log loss {before:.4f} -> {after:.4f}")
    assert after < before


def test_real_weights_of_one_width_are_refused_by_another_in_one_line():
    """The 0.35-wide file is not MobileNetV2 at alpha 1.0 (the bug of a registry without arguments), nor v1."""
    from core import WorkflowError
    from extract import backbone, backbones

    for name in ("mobilenet_v2", "mobilenet_v2_050", "mobilenet_025"):
        spec = backbones.get(name)
        with pytest.raises(WorkflowError) as e:
            backbone.build_base(spec, SIZE, backbone.resolve_weights(spec, V2_035, SIZE))
        assert f"not loadable as {spec.call} no-top weights (BACKBONE={name})" in str(e.value)
        assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------- flowers

FLOWERS = os.path.join(REAL, "flowers")


def test_flowers_head_and_baseline_learn_five_real_classes(tmp_path_factory):
    d = tmp_path_factory.mktemp("flowers")
    features = _features(FLOWERS, d / "features.h5", "mobilenet_025", V1_025)
    m = _head(features, d / "head", *HEAD)
    print(f"flowers: head val accuracy {_val_accuracy(m, 'head'):.4f}, baseline {_val_accuracy(m, 'baseline'):.4f}")
    assert _val_accuracy(m, "head") >= 0.70 and _val_accuracy(m, "baseline") >= 0.70
    assert m["cache"]["backbone_entry"] == "mobilenet_025"


FLIP = 0.05  # the share of flowers whose label is planted wrong


def plant(out, seed):
    """A copy of the flowers with FLIP of them moved into another class's folder, one photo copied under another
    name and one re-encoded at JPEG quality 70. Returns (moved paths relative to `out`, the duplicate pairs)."""
    from PIL import Image

    shutil.copytree(FLOWERS, out)
    classes = sorted(c for c in os.listdir(out) if os.path.isdir(os.path.join(out, c)))
    photos = sorted(os.path.join(c, f) for c in classes for f in sorted(os.listdir(os.path.join(out, c))))
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(photos), int(round(FLIP * len(photos))) + 2, replace=False)
    flipped = []
    for i in picked[:-2]:
        c, f = os.path.split(photos[i])
        to = rng.choice([k for k in classes if k != c])
        os.rename(os.path.join(out, c, f), os.path.join(out, to, f))
        flipped.append(os.path.join(to, f))
    copied, reencoded = (photos[i] for i in picked[-2:])
    copy = os.path.join(os.path.dirname(copied), "copy_of_" + os.path.basename(copied))
    q70 = os.path.join(os.path.dirname(reencoded), "q70_" + os.path.basename(reencoded))
    shutil.copy(os.path.join(out, copied), os.path.join(out, copy))
    buf = io.BytesIO()
    Image.open(os.path.join(out, reencoded)).convert("RGB").save(buf, "JPEG", quality=70)
    with open(os.path.join(out, q70), "wb") as fh:
        fh.write(buf.getvalue())
    return flipped, [{copied, copy}, {reencoded, q70}]


def flip_run(d, seed):
    """make features -> make head -> make report on the planted copy: (precision, recall, found dup pairs, planted)."""
    from report.__main__ import main

    data = d / "data"
    flipped, dups = plant(data, seed)
    features = _features(data, d / "features.h5", "mobilenet_025", V1_025)
    _head(features, d / "head", *HEAD)
    assert _run(main, ["--features", str(features), "--head-dir", str(d / "head"), "--data", str(data),
                       "--report-dir", str(d / "report"), "--seed", "0"]) == 0
    flagged = {r["path"] for r in csv.DictReader(open(d / "report" / "label_issues.csv"))}
    pairs = [{r["path_a"], r["path_b"]} for r in csv.DictReader(open(d / "report" / "near_duplicates.csv"))]
    hit = len(flagged & set(flipped))
    return hit / max(len(flagged), 1), hit / len(flipped), pairs, dups


# (precision, recall) measured over seeds 0-4 with `PYTHONPATH=.:tests python tests/test_real.py 5` (2026-12-08, 2
# shared cores): 15 flips among 302 photos, cleanlab flags about 60 (MobileNet alpha 0.25 features are 83% accurate
# here: most flags are real hard photos). The bars sit below the worst seed: twice the 5% base rate, half the flips.
FLIP_MEASURED = {0: (0.141, 0.600), 1: (0.176, 0.867), 2: (0.152, 0.667), 3: (0.169, 0.800), 4: (0.176, 0.800)}
MIN_PRECISION, MIN_RECALL = 2 * FLIP, 0.50


@pytest.fixture(scope="module")
def flips(tmp_path_factory):
    return flip_run(tmp_path_factory.mktemp("flips"), seed=0)


def test_report_finds_labels_flipped_on_real_photos(flips, record_property):
    precision, recall, _, _ = flips
    record_property("flip_precision", precision)
    record_property("flip_recall", recall)
    print(f"planted flips (seed 0): precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= MIN_PRECISION and recall >= MIN_RECALL


def test_report_finds_a_copy_and_a_reencoded_photo_but_not_distinct_photos(flips):
    _, _, pairs, dups = flips
    print(f"near-duplicates: {len(pairs)} pairs: {pairs}")
    assert all(dup in pairs for dup in dups)
    assert [p for p in pairs if p not in dups] == []  # no two distinct photos (of one class or any) are paired


if __name__ == "__main__":  # the 5-seed measurement behind MIN_PRECISION and MIN_RECALL
    import pathlib
    import sys
    import tempfile

    for seed in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        with tempfile.TemporaryDirectory() as t:
            p, r, pairs, dups = flip_run(pathlib.Path(t), seed)
            print(f"FLIPS seed {seed}: precision {p:.3f} recall {r:.3f} dup pairs found {sum(d in pairs for d in dups)}"
                  f"/2, other pairs {len([x for x in pairs if x not in dups])}", flush=True)
