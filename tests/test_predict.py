"""Stage 3 outputs: predictions for a folder with broken files, and the Kaggle submission file's exact format."""
import csv
import os
import re

import numpy as np
import pytest

from conftest import IMG, run_module
from test_finetune import build_from_cache, write_head


@pytest.fixture(scope="module")
def model_file(cache_path, tmp_path_factory):
    """A model.keras as `make finetune` writes it (head on the rebuilt backbone; not fine-tuned, to stay fast)."""
    from finetune.record import save_model

    head_dir = write_head(cache_path, str(tmp_path_factory.mktemp("head")))
    model, _, cache, _ = build_from_cache(cache_path, head_dir)
    path = str(tmp_path_factory.mktemp("model") / "model.keras")
    save_model(model, path, {"image_size": IMG, "class_names": cache.class_names, "config": {"test": True}})
    cache.close()
    return path


@pytest.fixture(scope="module")
def kaggle_test_dir(tmp_path_factory):
    """Kaggle's test layout: 1.jpg .. 12.jpg (odd ids cats, even dogs), 2 broken images, and junk to ignore."""
    from extract.synth import make_dataset

    d = tmp_path_factory.mktemp("test")
    written = make_dataset(d, n=12, layout="unlabelled", seed=5, broken=2)
    return d, written


def reference_probs(model_file, folder, names):
    """P(dog) from the loaded model on stage 1's decode, one image at a time: what every row must hold."""
    from extract.images import load_image
    from finetune.record import load_model

    model, _ = load_model(model_file)
    x = np.stack([load_image(os.path.join(folder, n), IMG) for n in names]).astype("float32")
    return dict(zip(names, model(x, training=False).numpy().ravel()))


@pytest.mark.slow
def test_predict_on_a_folder_with_broken_files(model_file, kaggle_test_dir, tmp_path):
    folder, written = kaggle_test_dir
    out = tmp_path / "pred.csv"
    r = run_module("finetune.predict", "--input", folder, "--model", model_file, "--out", out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    # The (n, K) contract at K = 2: the predicted label, its P, and one column per class (the binary model's single
    # sigmoid p is prob_dog, 1 - p prob_cat)
    assert rows[0] == ["path", "label", "prob", "prob_cat", "prob_dog"]
    got = {os.path.basename(p): (float(dog), label) for p, label, prob, cat, dog in rows[1:]}
    assert set(got) == set(written)  # every decodable image once; broken files and junk never
    for p, label, prob, cat, dog in rows[1:]:
        assert float(cat) + float(dog) == pytest.approx(1.0, abs=2e-6)
        assert float(prob) == max(float(cat), float(dog)) or float(dog) == 0.5
    ref = reference_probs(model_file, folder, sorted(written))
    for name, (prob, label) in got.items():
        assert prob == pytest.approx(ref[name], abs=1e-5)
        assert label == ("dog" if prob >= 0.5 else "cat")
    truth = {n: ("cat", "dog")[lab] for n, lab in written.items()}
    assert np.mean([got[n][1] == truth[n] for n in got]) >= 0.8  # the head learned the synthetic task
    skipped = (tmp_path / "pred.skipped.txt").read_text().splitlines()
    broken = sorted(set(os.listdir(folder)) - set(written) - {"Thumbs.db", ".DS_Store", "readme.txt", "labels.csv"})
    assert len(broken) == 2 and sorted(os.path.basename(s.split("\t")[0]) for s in skipped) == broken
    for name in broken:
        assert f"skipped {os.path.join(str(folder), name)}" in r.stdout + r.stderr
    assert re.search(r"12 images predicted \(\d+ cat, \d+ dog\), 2 broken skipped", r.stdout)
    assert "images/s" in r.stdout


@pytest.mark.slow
def test_submission_file_format(model_file, kaggle_test_dir, tmp_path, capsys):
    from finetune.predictions import BROKEN_PROB, CLIP
    from finetune.submission import main

    CLIP_LO, CLIP_HI = CLIP, 1 - CLIP

    folder, written = kaggle_test_dir
    out = tmp_path / "submission.csv"
    assert main(["--test", str(folder), "--model", model_file, "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "id,label"
    assert all(re.fullmatch(r"\d+,[01]\.\d{6}", line) for line in lines[1:])
    ids = [int(line.split(",")[0]) for line in lines[1:]]
    files = [n for n in os.listdir(folder) if n.endswith(".jpg")]
    assert ids == sorted(int(n[:-4]) for n in files)  # numeric order (2 before 10), one row per image, broken included
    assert len(ids) == len(written) + 2
    probs = {i: float(line.split(",")[1]) for i, line in zip(ids, lines[1:])}
    assert all(CLIP_LO <= p <= CLIP_HI for p in probs.values())
    ref = reference_probs(model_file, folder, sorted(written))
    for name in written:
        assert probs[int(name[:-4])] == pytest.approx(np.clip(ref[name], CLIP_LO, CLIP_HI), abs=1e-6)
    for name in set(files) - set(written):
        assert probs[int(name[:-4])] == BROKEN_PROB
    assert "2 broken image(s)" in capsys.readouterr().out


def test_submission_rows_clip_sort_and_fill():
    from finetune.predictions import submission_rows

    rows = submission_rows(np.array([10, 2, 1, 33]), np.array([1.0, 0.0, np.nan, 0.3]))
    assert rows == [(1, "0.500000"), (2, "0.005000"), (10, "0.995000"), (33, "0.300000")]


@pytest.mark.slow
def test_submission_refuses_non_numeric_names(model_file, train_dir, tmp_path, capsys):
    from finetune.submission import main

    with pytest.raises(SystemExit) as e:
        main(["--test", str(train_dir), "--model", model_file, "--out", str(tmp_path / "s.csv")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "not numeric ids" in err and "make predict" in err
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.slow
def test_predict_refuses_a_file_that_is_not_a_finetuned_model(kaggle_test_dir, tmp_path, capsys):
    from finetune.predict import main

    bogus = tmp_path / "model.keras"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as e:
        main(["--input", str(kaggle_test_dir[0]), "--model", str(bogus), "--out", str(tmp_path / "p.csv")])
    assert e.value.code == 2 and "not a model written by `make finetune`" in capsys.readouterr().err
