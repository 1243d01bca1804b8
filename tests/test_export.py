"""make export: each format from a demo-size model.keras (75 px, WEIGHTS=none, float32), proven on the val images."""
import json
import os

import numpy as np
import pytest

from conftest import IMG, assert_user_error, run_module
from test_finetune import build_from_cache, write_head

T = 1.7  # a temperature far from 1, so a graph that forgot it would fail the proof


@pytest.fixture(scope="module")
def model_file(cache_path, train_dir, tmp_path_factory):
    """A float32 model.keras as `make finetune` records it, with a calibration temperature and its DATA/FEATURES."""
    from finetune.record import save_model, to_precision

    head_dir = write_head(cache_path, str(tmp_path_factory.mktemp("head")))
    model, _, cache, _ = build_from_cache(cache_path, head_dir)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    model = to_precision(model, "float32")  # the session's cache may compute in bf16 (PRECISION=auto on this CPU)
    save_model(model, path, {"image_size": IMG, "class_names": cache.class_names, "precision": "float32",
                             "calibration": {"temperature": T},
                             "config": {"data": str(train_dir), "features": str(cache_path)}})
    cache.close()
    return path


@pytest.fixture(scope="module")
def val(model_file):
    from export.proof import image_set
    from finetune.record import read_meta

    return image_set(read_meta(model_file), None, None)


def reference(model_file, images):
    """model.keras + T as `make predict` computes it (from the float32 probabilities)."""
    from export.proof import reference as ref
    from finetune.record import load_model

    model, meta = load_model(model_file, "float32")
    return ref(model, meta, images)


def check_record(export_dir, name, fmt, quantize):
    with open(os.path.join(export_dir, f"{name}.json")) as f:
        rec = json.load(f)
    assert rec["format"] == fmt and rec["quantize"] == quantize and rec["temperature"] == T
    assert rec["proof"]["passed"] and rec["proof"]["max_abs_diff"] <= rec["proof"]["bound"]
    assert rec["output"]["shape"] == [None, 2] and rec["model_record"]["calibration"]["temperature"] == T
    return rec


def test_savedmodel_plain_load_and_bytes_signature(model_file, val, tmp_path):
    import tensorflow as tf

    from export.run import export_model
    from extract.images import load_image

    rec = export_model(model_file, "savedmodel", tmp_path, "none")
    assert rec["proof"]["max_abs_diff"] <= 1e-4 and rec["proof"]["n"] == len(val[1])
    check_record(tmp_path, "savedmodel", "savedmodel", "none")
    loaded = tf.saved_model.load(str(tmp_path / "savedmodel"))
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    images, _ = val
    ref = reference(model_file, images[:8])
    got = loaded.signatures["serving_default"](images=tf.constant(images[:8]))["probabilities"].numpy()
    assert got.shape == (8, 2) and np.abs(got - ref).max() <= 1e-4
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-6)
    # The bytes signature on a JPEG file at the model's size: TF's decoder gives the pixels, the images signature
    # on those same pixels must give the same answer; PIL's decode (make predict) is close but not bit-equal.
    jpeg = tmp_path / "cat.jpg"
    from PIL import Image

    Image.fromarray(images[0]).save(jpeg, quality=95)
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant([jpeg.read_bytes()]))["probabilities"].numpy()
    pixels = tf.io.decode_jpeg(jpeg.read_bytes(), channels=3)[None]
    same = loaded.signatures["serving_default"](images=pixels)["probabilities"].numpy()
    assert out.shape == (1, 2) and np.abs(out - same).max() <= 1e-6
    pil = reference(model_file, load_image(str(jpeg), IMG)[None])
    assert np.abs(out - pil).max() <= 0.05
    labels = (tmp_path / "savedmodel" / "assets" / "labels.txt").read_text().split()
    assert labels == rec["class_names"]


def test_onnx_runs_in_onnxruntime(model_file, val, tmp_path):
    import onnx
    import onnxruntime as ort

    from export.run import export_model

    rec = export_model(model_file, "onnx", tmp_path, "none")
    assert rec["proof"]["max_abs_diff"] <= 1e-4
    check_record(tmp_path, "model.onnx", "onnx", "none")
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == rec["class_names"] and float(meta["temperature"]) == T
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    images, _ = val
    got = sess.run(None, {sess.get_inputs()[0].name: images[:5]})[0]
    assert got.shape == (5, 2) and np.abs(got - reference(model_file, images[:5])).max() <= 1e-4


@pytest.mark.parametrize("quantize", ["none", *(pytest.param(q, marks=pytest.mark.slow) for q in ("float16", "int8", "int8-full"))])
def test_litert_runs_in_tf_interpreter(model_file, val, tmp_path, quantize):
    import tensorflow as tf

    from export.proof import BOUNDS
    from export.run import export_model

    rec = export_model(model_file, "litert", tmp_path, quantize)
    name = rec["artifact"]
    check_record(tmp_path, name, "litert", quantize)
    interp = tf.lite.Interpreter(model_path=str(tmp_path / name))
    images, _ = val
    inp = interp.get_input_details()[0]
    assert inp["dtype"] == np.uint8
    interp.resize_tensor_input(inp["index"], images[:4].shape)
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], images[:4])
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"])
    assert got.shape == (4, 2) and np.abs(got - reference(model_file, images[:4])).max() <= BOUNDS[("litert", quantize)]
    for k in ("accuracy", "log_loss"):
        assert np.isfinite(rec["proof"]["export"][k])


@pytest.mark.slow
def test_failed_proof_writes_nothing_and_exits_2(model_file, tmp_path, monkeypatch, capsys):
    """A bound no export can meet: exit 2 with the figures in one error line; no export and no record left."""
    from export import proof
    from export.__main__ import main

    monkeypatch.setitem(proof.BOUNDS, ("onnx", "none"), -1.0)
    with pytest.raises(SystemExit) as e:
        main(["--model", model_file, "--format", "onnx", "--export-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and "proof failed, nothing written" in err, err
    assert "max |diff|" in err and "accuracy" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["model.onnx.lock"]


def test_quantize_other_than_litert_is_refused(model_file, tmp_path):
    r = run_module("export", "--model", model_file, "--format", "onnx", "--quantize", "int8", "--export-dir", tmp_path)
    assert_user_error(r, "QUANTIZE=int8 applies to FORMAT=litert only")


def test_graph_calibrates_saturated_probabilities_as_make_predict_does():
    """P = 1.0, 0.99999994, 0 in float32 (a random-weight net gives them): the graph's clip must equal
    classify.calibrate's float64 one, else T moves them apart (0.002 at T = 6.85, found at 150 px)."""
    import keras

    from export.graph import calibrated, to_logits
    from export.proof import reference

    x = keras.Input((4, 4, 3))
    out = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(x, out)
    model.layers[-1].set_weights([np.full((3, 1), 1 / 3, np.float32), np.array([-127.5], np.float32)])
    levels = np.array([255, 146, 145, 140, 128, 120, 100, 0], np.uint8)  # logits 127.5 .. -127.5
    images = np.broadcast_to(levels[:, None, None, None], (len(levels), 4, 4, 3)).copy()
    for t in (6.85, 0.5):
        meta = {"image_size": 4, "calibration": {"temperature": t}}
        got = np.asarray(calibrated(model, meta)(images), np.float64)
        ref = reference(model, meta, images)
        assert got.shape == (len(levels), 2) and np.abs(got - ref).max() <= 1e-6, (t, got - ref)
    # From the logits (what exports use): the Dense's sigmoid switched off, sigmoid(z / T) exactly.
    assert to_logits(model) == "sigmoid" and to_logits(model) is None  # switched off once; nothing left to find
    z = (levels.astype(np.float64) - 127.5)
    for t in (6.85, 0.5):
        meta = {"image_size": 4, "calibration": {"temperature": t}}
        got = np.asarray(calibrated(model, meta, "sigmoid")(images), np.float64)
        ref = reference(model, meta, images, kind="sigmoid")
        exact = 1 / (1 + np.exp(-z / t))  # up to the float32 kernel 1/3
        assert np.abs(ref[:, 1] - exact).max() <= 1e-6 and np.abs(got - ref).max() <= 1e-6, (t, got - ref)
