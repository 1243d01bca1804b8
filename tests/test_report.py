"""`make report` tests: label errors and copies are found (measured), the page really renders in Chromium, bad
input exits 2 with one line, and `make features EXCLUDE=` leaves images out.

Builds its own synthetic sets under tmp_path (WEIGHTS=none, 75x75). Example: python -m pytest tests/test_report.py -q
"""
import csv
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, extract_args, run_module

from cache import open_cache
from extract.synth import make_dataset

N_IMAGES = 400
FLIP_FRACTION = 0.05
EXACT_COPIES, RESIZE_FACTORS = 2, (0.5, 0.75, 1.5)


def flip_labels(root, names, fraction, rng):
    """Move a known `fraction` of the images to the other class (cat.N.jpg -> dog.5000K.jpg); return the new names."""
    flipped = []
    for k, rel in enumerate(rng.choice(sorted(names), int(round(fraction * len(names))), replace=False)):
        cls, _, ext = rel.split(".")
        new = f"{'dog' if cls == 'cat' else 'cat'}.{50000 + k}.{ext}"
        os.rename(os.path.join(root, rel), os.path.join(root, new))
        flipped.append(new)
    return flipped


def add_copies(root, sources, factors, n_exact):
    """Exact byte copies, then copies resized by each factor and re-encoded; return [(source, copy)]."""
    pairs = []
    for k, rel in enumerate(sources[:n_exact + len(factors)]):
        new = f"{rel.split('.')[0]}.{60000 + k}.jpg"
        if k < n_exact:
            shutil.copy(os.path.join(root, rel), os.path.join(root, new))
        else:
            f = factors[k - n_exact]
            with Image.open(os.path.join(root, rel)) as im:
                im.resize((round(im.width * f), round(im.height * f)), Image.BILINEAR).save(
                    os.path.join(root, new), quality=85)
        pairs.append((rel, new))
    return pairs


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def flipped(tmp_path_factory):
    """A labelled set with 5% flipped labels and injected copies, its cache, a head, and `python -m report`'s run."""
    from classify.__main__ import main as classify_main
    from extract.__main__ import main as extract_main

    base = tmp_path_factory.mktemp("report")
    data, features, head_dir, report_dir = base / "train", base / "features.h5", base / "head", base / "report"
    # 200-400 px sources, as Kaggle's photos are larger than the 75 px input: a copy resized x0.5 is still >= 75 px.
    written = make_dataset(data, n=N_IMAGES, layout="kaggle", size=(200, 400), seed=5, broken=2, junk=False)
    rng = np.random.default_rng(0)
    flipped = flip_labels(data, list(written), FLIP_FRACTION, rng)
    rest = sorted(r for r in written if os.path.exists(data / r))  # the flipped ones were renamed away
    copies = add_copies(data, list(rng.choice(rest, 10, replace=False)), RESIZE_FACTORS, EXACT_COPIES)
    assert extract_main(extract_args(data, features)) == 0
    assert classify_main(["--features", str(features), "--head-dir", str(head_dir), "--epochs", "3"]) == 0
    proc = run_module("report", "--features", features, "--head-dir", head_dir, "--data", data,
                      "--report-dir", report_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data": data, "features": features, "head_dir": head_dir, "report_dir": report_dir, "proc": proc,
            "flipped": flipped, "copies": copies}


@pytest.mark.slow
def test_label_errors_and_copies_are_found(flipped):
    d = flipped
    issues = read_csv(d["report_dir"] / "label_issues.csv")
    found, truth = [r["path"] for r in issues], set(d["flipped"])
    hits = len(set(found) & truth)
    precision, recall = hits / max(len(found), 1), hits / len(truth)
    print(f"\nlabel issues: {len(found)} flagged, {hits} of {len(truth)} flipped; precision {precision:.3f}, "
          f"recall {recall:.3f}")
    assert precision >= 0.8 and recall >= 0.9, (found, sorted(truth))
    assert [int(r["rank"]) for r in issues] == list(range(1, len(issues) + 1))
    assert all(0 <= float(r["prob_given"]) <= 1 and r["given_label"] in ("cat", "dog") for r in issues)

    dups = read_csv(d["report_dir"] / "near_duplicates.csv")
    cos = {frozenset((r["path_a"], r["path_b"])): float(r["cosine"]) for r in dups}
    print("copies:", [(b, cos.get(frozenset((a, b)))) for a, b in d["copies"]],
          f"; {len(dups)} pairs above the threshold in all")
    for a, b in d["copies"]:
        assert frozenset((a, b)) in cos, (a, b, dups)
    assert all(cos[frozenset(p)] > 0.9999 for p in d["copies"][:EXACT_COPIES])
    assert {r["split_a"] for r in dups} <= {"train", "val"} and list(dups[0]) == [
        "path_a", "path_b", "cosine", "split_a", "split_b", "label_a", "label_b"]

    top = read_csv(d["report_dir"] / "top_losses.csv")
    assert len(top) == 24 and {r["model"] for r in top} == {"head"}  # no MODEL_DIR: the head only
    losses = [float(r["loss"]) for r in top]
    assert losses == sorted(losses, reverse=True)
    summary = json.loads((d["report_dir"] / "summary.json").read_text())
    assert set(summary["scores"]) == {"baseline", "head"}
    assert all(0 <= s["val_ece"] <= 1 and s["val_auc"] is not None for s in summary["scores"].values())
    assert d["proc"].stdout.strip().splitlines()[-1] == f"report: {d['report_dir']}/report.html"


PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {images: imgs.length, broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    height: document.documentElement.scrollHeight,
    sections: [...document.querySelectorAll('section')].map(s => [s.id, s.offsetHeight]),
    cards: [...document.querySelectorAll('#top-losses .card')].map(c => c.getBoundingClientRect().top),
    resources: performance.getEntriesByType('resource').map(e => e.name.slice(0, 30))};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium():
    """Debian's chromium, installed by `make browser` if missing; None only where it cannot be installed."""
    if shutil.which("chromium") is None:
        subprocess.run(["make", "--no-print-directory", "browser"], cwd=ROOT, capture_output=True, timeout=900)
    return shutil.which("chromium")


def run_chromium(exe, tmp_path, *args):
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND",  # any name lookup fails: nothing can leave the machine
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([exe, *flags, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_report_renders_in_a_real_browser(flipped, tmp_path):
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is absent and `make browser` could not install it")
    page = (flipped["report_dir"] / "report.html").read_text()
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", page.replace("data:image", "")), "a URL in the page"
    assert "<script" not in page
    n_img = page.count("<img ")
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    proc = run_chromium(exe, tmp_path, "--dump-dom", "--virtual-time-budget=10000", probe.as_uri())
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, proc.stderr[-2000:]
    r = json.loads(html.unescape(m.group(1)))
    print(f"\nbrowser: {r['images']} images, page height {r['height']} px, sections {r['sections']}")
    assert r["images"] == n_img and n_img >= 24 + 24 + 2 and r["broken"] == []
    assert all(name.startswith("data:") for name in r["resources"]), r["resources"]
    heights = dict(r["sections"])
    assert list(heights) == ["summary", "scores", "curves", "top-losses", "label-issues", "near-duplicates",
                             "reliability"]
    rows = len(set(round(t) for t in r["cards"]))  # the top-loss grid's rows of 120 px thumbnails
    assert heights["top-losses"] >= rows * 120 and rows >= 2
    assert all(h >= 60 for h in heights.values()) and r["height"] >= sum(heights.values())
    shot = tmp_path / "report.png"
    proc = run_chromium(exe, tmp_path, f"--screenshot={shot}", f"--window-size=1280,{r['height']}",
                        "--hide-scrollbars", (flipped["report_dir"] / "report.html").as_uri())
    assert shot.exists(), proc.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, r["height"])
        assert np.asarray(im.convert("L")).std() > 20  # drawn, not a blank page


def run_report(capsys, *args):
    from report.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([*map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    return e.value.code, err


@pytest.mark.slow  # it needs the fixture's cache and head
def test_bad_inputs_exit_2_with_one_line(flipped, tmp_path, capsys):
    d = flipped
    ok = {"--features": d["features"], "--head-dir": d["head_dir"], "--data": d["data"],
          "--report-dir": tmp_path / "out"}

    def case(**change):
        args = {**ok, **{f"--{k.replace('_', '-')}": v for k, v in change.items()}}
        code, err = run_report(capsys, *[x for kv in args.items() for x in kv])
        assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
        return err[0]

    assert "make features" in case(features=tmp_path / "none.h5")
    (tmp_path / "foreign.h5").write_bytes(b"not hdf5")
    assert "not a readable HDF5" in case(features=tmp_path / "foreign.h5")
    assert "make head" in case(head_dir=tmp_path / "nohead")
    other = tmp_path / "other_head"
    shutil.copytree(d["head_dir"], other)
    m = json.loads((other / "metrics.json").read_text())
    m["cache"]["fingerprint"] = "0" * 64  # as if trained on another cache
    (other / "metrics.json").write_text(json.dumps(m))
    assert "another cache" in case(head_dir=other)
    assert "no model.keras" in case(model_dir=tmp_path)
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "model.keras").write_bytes(b"PK not really")
    assert "not a model written by `make finetune`" in case(model_dir=tmp_path / "fake")
    make_dataset(tmp_path / "elsewhere", n=6, layout="kaggle", seed=1, junk=False)
    assert "not the image set" in case(data=tmp_path / "elsewhere")
    from extract.__main__ import main as extract_main

    make_dataset(tmp_path / "unlabelled", n=6, layout="unlabelled", seed=1, junk=False)
    assert extract_main(extract_args(tmp_path / "unlabelled", tmp_path / "u.h5")) == 0
    capsys.readouterr()
    assert "an unlabelled folder" in case(features=tmp_path / "u.h5")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # it needs the fixture's cache and head
def test_an_image_gone_from_data_shows_a_placeholder(flipped, tmp_path, capsys):
    from report.__main__ import main
    from report.thumbs import placeholder

    d = flipped
    gone = read_csv(d["report_dir"] / "top_losses.csv")[0]["path"]  # the first thumbnail of the page
    os.rename(d["data"] / gone, tmp_path / gone)
    try:
        assert main(["--features", str(d["features"]), "--head-dir", str(d["head_dir"]), "--data", str(d["data"]),
                     "--report-dir", str(tmp_path / "out")]) == 0
    finally:
        os.rename(tmp_path / gone, d["data"] / gone)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any("changed since the cache was built" in n for n in summary["notes"])
    page = (tmp_path / "out" / "report.html").read_text()
    assert f'<img src="{placeholder()}" alt="{gone}"' in page
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"report: {tmp_path / 'out'}/report.html"


def test_missing_thumbnail_source_shows_a_placeholder(tmp_path):
    from report.thumbs import placeholder, thumbnail

    make_dataset(tmp_path, n=2, layout="kaggle", seed=1, junk=False)
    assert thumbnail(tmp_path, "cat.0.jpg").startswith("data:image/jpeg;base64,")
    assert thumbnail(tmp_path, "cat.999.jpg") == placeholder()
    (tmp_path / "dog.1.jpg").write_bytes(b"truncated")
    assert thumbnail(tmp_path, "dog.1.jpg") == placeholder()


def test_ece_and_reliability_bins():
    from core.metrics import expected_calibration_error as ece, reliability

    # confidences 0.8 (right), 0.9 (right), 0.6 (wrong): |1-.8| + |1-.9| + |0-.6| over 3 rows
    assert ece([0, 1, 1], [0.2, 0.9, 0.4]) == pytest.approx(0.3)
    assert ece([0, 1], [0.0, 1.0]) == pytest.approx(0.0)
    r = reliability([0, 1, 1, 0], [0.5, 1.0, 0.75, 0.3])
    assert sum(r["count"]) == 4 and r["count"][0] == 1 and r["count"][-1] == 1


def test_exclude_leaves_images_out_and_changes_the_identity(tmp_path, capsys):
    from extract.__main__ import main as extract_main

    data = tmp_path / "train"
    make_dataset(data, n=24, layout="kaggle", seed=2, broken=1, junk=False)
    plain, excl = tmp_path / "plain.h5", tmp_path / "excl.h5"
    assert extract_main(extract_args(data, plain)) == 0
    with open_cache(plain) as c:
        paths, fp_plain, cfg_plain = list(c.paths), c.fingerprint, c.config
    assert "exclude" not in cfg_plain  # without EXCLUDE the identity is what it always was
    listed = sorted(paths)[-1:] + paths[:2]  # the last input too: its commit is the exclusion's own
    (tmp_path / "issues.csv").write_text("path,given_label,prob_given,rank\n" +
                                         "".join(f"{p},cat,0.1,{i + 1}\n" for i, p in enumerate(listed)))
    assert extract_main(extract_args(data, excl, "--exclude", str(tmp_path / "issues.csv"))) == 0
    with open_cache(excl) as c:
        assert sorted(c.paths) == sorted(set(paths) - set(listed))
        reasons = dict(c.skipped)
        assert all(reasons[p] == f"excluded by {tmp_path / 'issues.csv'}" for p in listed)
        assert len(c.skipped) == len(listed) + 1  # and the broken file, as before
        assert c.fingerprint != fp_plain and c.config["exclude"]["n_excluded"] == 3
    assert "excluded by" in (tmp_path / "excl.skipped.txt").read_text()
    capsys.readouterr()
    assert extract_main(extract_args(data, excl, "--exclude", str(tmp_path / "issues.csv"))) == 0
    assert "up to date" in capsys.readouterr().out
    (tmp_path / "list.txt").write_text(f"{data / listed[0]}\n")  # a text file, absolute paths
    assert extract_main(extract_args(data, excl, "--exclude", str(tmp_path / "list.txt"))) == 0
    with open_cache(excl) as c:
        assert len(c.paths) == len(paths) - 1
    (tmp_path / "bad.csv").write_text("file,label\nx.jpg,cat\n")
    with pytest.raises(SystemExit) as e:
        extract_main(extract_args(data, excl, "--exclude", str(tmp_path / "bad.csv")))
    assert e.value.code == 2 and "`path` column" in capsys.readouterr().err
