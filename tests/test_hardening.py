"""Hardening (issue 14): one writer per output, a full disk, damaged caches, moved data, real-world photos, zips."""
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from cache import CacheMismatch, open_cache, partial_path
from core import WorkflowError
from core.lock import OutputBusy, lock_path, output_lock
from core.space import NoSpace, check_space
from conftest import IMG, ROOT, committed_inputs, extract_args, run_module
from extract.synth import make_dataset


def _one_error_line(r, *needles):
    """Exit 2, exactly one `error:` line on stderr holding every needle, and no traceback."""
    lines = [l for l in r.stderr.splitlines() if l.strip() and "%|" not in l]  # tqdm's bar is not a message
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [l for l in lines if l.startswith("error: ")]
    assert len(errors) == 1, r.stderr
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def _popen_extract(data, out, *extra):
    return subprocess.Popen([sys.executable, "-m", "extract", *map(str, extract_args(data, out, *extra))], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(cond, proc, timeout=300):
    deadline = time.time() + timeout
    while not cond() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the first run ended before the check: make it longer"


def _features(path):
    with open_cache(path) as c:
        return c.read(np.arange(len(c))), c.paths, c.labels, c.split, c.skipped


# -- one writer per output ------------------------------------------------------------------------------------
def test_lock_excludes_a_second_holder_and_names_the_first(tmp_path):
    out = str(tmp_path / "f.h5")
    with output_lock(out, "FEATURES"):
        with pytest.raises(OutputBusy, match=rf"FEATURES={out} is being written by another process \(pid "
                                             rf"{os.getpid()}.*wait for it to finish, or stop it"):
            with output_lock(out, "FEATURES"):
                pass
    with output_lock(out, "FEATURES"):  # released on leaving the block
        pass
    assert os.path.exists(lock_path(out))


@pytest.mark.slow
def test_two_concurrent_extractions_one_wins_the_other_exits_2_then_kill_9_never_blocks(tmp_path):
    make_dataset(tmp_path / "d", n=240, seed=5, size=(40, 90))
    out = tmp_path / "f.h5"
    first = _popen_extract(tmp_path / "d", out, "--batch", "8")
    _wait_for(lambda: os.path.exists(partial_path(out)), first)
    second = run_module("extract", *extract_args(tmp_path / "d", out, "--batch", "8"))
    _one_error_line(second, f"FEATURES={out} is being written by another process (pid {first.pid}", "kill")
    assert first.wait(timeout=600) == 0, first.stderr.read()
    # A writer killed with SIGKILL holds no lock any more (flock dies with the process): the rerun resumes.
    out2 = tmp_path / "g.h5"
    victim = _popen_extract(tmp_path / "d", out2, "--batch", "8")
    _wait_for(lambda: committed_inputs(partial_path(out2)) >= 16, victim)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    r = run_module("extract", *extract_args(tmp_path / "d", out2, "--batch", "8"))
    assert r.returncode == 0 and "resuming at input" in r.stdout, r.stdout + r.stderr
    a, b = _features(out), _features(out2)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-7)
    assert a[1] == b[1] and (a[2] == b[2]).all()


@pytest.mark.parametrize("module, args, var", [
    ("classify", ["--features", "F.h5", "--head-dir", "{out}"], "HEAD_DIR"),
    ("finetune", ["--features", "F.h5", "--head-dir", "H", "--model-dir", "{out}"], "MODEL_DIR"),
    ("finetune.predict", ["--input", "I", "--model", "M", "--out", "{out}"], "PREDICTIONS"),
    ("finetune.submission", ["--test", "T", "--model", "M", "--out", "{out}"], "SUBMISSION"),
])
def test_every_writing_stage_refuses_an_output_being_written(tmp_path, module, args, var):
    out = tmp_path / "out"
    with output_lock(out, var):  # this test process plays the first writer
        r = run_module(module, *[a.format(out=out) for a in args])
    _one_error_line(r, f"{var}={out} is being written by another process (pid {os.getpid()}")


# -- disk space -------------------------------------------------------------------------------------------------
ENOSPC_DRIVER = """
import errno, sys
from cache import writer
real, calls = writer.CacheWriter.commit, []
def commit(self, *a, **k):  # the disk fills after {k} commits: the error as h5py raises it (errno in the text)
    calls.append(1)
    if len(calls) > {k}:
        raise OSError("Can't synchronously write data (file write failed: time = Wed Dec  2 10:00:00 2026, "
                      "filename = 'f.h5.partial', file descriptor = 5, errno = 28, error message = 'No space left "
                      "on device', buf = 0x7f, total write size = 442368, bytes this sub-write = 442368)")
    return real(self, *a, **k)
writer.CacheWriter.commit = commit
from extract.__main__ import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_full_disk_mid_run_exits_2_keeps_the_partial_and_the_rerun_resumes_to_the_same_cache(tmp_path, train_dir,
                                                                                             cache_path):
    out = tmp_path / "f.h5"
    args = extract_args(train_dir, out)
    r = subprocess.run([sys.executable, "-c", ENOSPC_DRIVER.format(k=3), *args], cwd=ROOT, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    _one_error_line(r, f"no space left on {tmp_path} while writing {out}", "free space, then rerun the same "
                    "command to resume", f"{partial_path(out)} is kept")
    assert os.path.exists(partial_path(out)) and not out.exists()
    r = run_module("extract", *args)
    assert r.returncode == 0 and "resuming at input 48/" in r.stdout, r.stdout + r.stderr  # 3 commits x 16
    a, b = _features(cache_path), _features(out)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-7)
    assert a[1] == b[1] and (a[2] == b[2]).all() and (a[3] == b[3]).all() and a[4] == b[4]


def test_space_check_says_needed_free_and_where(tmp_path):
    with pytest.raises(NoSpace, match=rf"FEATURES={tmp_path}/x.h5: needs about .* TB, {tmp_path} has .* free"):
        check_space(tmp_path / "x.h5", 10 ** 18, "FEATURES")
    check_space(tmp_path / "sub" / "x.h5", 1, "FEATURES")  # a folder still to be made: its parent's disk


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


@pytest.mark.slow
def test_extraction_refuses_to_start_on_a_disk_too_small(tmp_path, train_dir):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "512k"):
        pytest.skip("cannot mount a tmpfs here (needs root); test_space_check_says_needed_free_and_where covers it")
    try:
        r = run_module("extract", *extract_args(train_dir, small / "f.h5"))
        _one_error_line(r, f"FEATURES={small}/f.h5: needs about", f"{small} has", "free")
        assert not os.path.exists(partial_path(small / "f.h5"))
    finally:
        subprocess.run(["umount", str(small)])


# -- damaged caches -------------------------------------------------------------------------------------------
def _snapshot(path):
    with open_cache(path) as c:
        return {"features": c.read(np.arange(len(c))), "labels": c.labels, "split": c.split, "paths": c.paths,
                "skipped": c.skipped, "config": c.config, "fingerprint": c.fingerprint}


def _same(a, b):
    return all(np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def test_damage_anywhere_reads_the_original_values_or_exits_2(tmp_path, cache_path):
    from cache.integrity import CacheCorrupt

    original = _snapshot(cache_path)
    size = os.path.getsize(cache_path)
    with h5py.File(cache_path, "r") as f:
        ds = f["features"]
        data_at = [ds.id.get_chunk_info(i).byte_offset for i in range(ds.id.get_num_chunks())]
    # 40 offsets spread evenly over the file, 8 in the first 4 KiB (superblock, root group, attributes), and the
    # start of every feature chunk: 8 bytes XOR-ed at each, one damaged copy per offset.
    offsets = sorted(set(list(np.linspace(0, size - 8, 40).astype(int)) + list(range(0, 4096, 512)) + data_at))
    outcomes = {"same": 0, "refused": 0}
    refused_copy = None
    for off in offsets:
        copy = tmp_path / "damaged.h5"
        shutil.copyfile(cache_path, copy)
        with open(copy, "r+b") as f:
            f.seek(off)
            b = bytearray(f.read(8))
            f.seek(off)
            f.write(bytes(x ^ 0x5A for x in b))
        try:
            got = _snapshot(copy)
        except WorkflowError as e:  # CacheCorrupt, or open_cache's "not a readable HDF5 file"
            msg = str(e)
            assert "\n" not in msg and str(copy) in msg and "make features" in msg, (off, msg)
            outcomes["refused"] += 1
            if isinstance(e, CacheCorrupt) and off in data_at:
                refused_copy = tmp_path / "refused.h5"
                shutil.copyfile(copy, refused_copy)
            continue
        assert _same(got, original), f"damage at offset {off} of {size} was read as different values"
        outcomes["same"] += 1
    assert outcomes["refused"] >= len(data_at), outcomes  # every damaged feature chunk is caught
    # A truncated file: refused too.
    shutil.copyfile(cache_path, tmp_path / "short.h5")
    with open(tmp_path / "short.h5", "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(WorkflowError, match="short.h5"):
        _snapshot(tmp_path / "short.h5")
    # The stage that reads it, as a user runs it: exit 2, one line, the file and the fix.
    r = run_module("classify", "--features", refused_copy, "--head-dir", tmp_path / "head", "--epochs", "1")
    _one_error_line(r, f"{refused_copy}: damaged", f"make features FEATURES={refused_copy}")


def test_damage_scan_counts_no_different_values(cache_path):
    from cache.checks import damage_scan

    m = damage_scan(cache_path, n=30)
    assert m["different"] == [] and m["refused"] > 0 and m["same"] + m["refused"] == m["copies"] >= 20


def test_a_cache_of_the_previous_format_is_refused_with_the_rebuild(tmp_path, cache_path):
    old = tmp_path / "old.h5"
    shutil.copyfile(cache_path, old)
    with h5py.File(old, "r+") as f:
        f.attrs["format_version"] = 1
    with pytest.raises(CacheMismatch, match=r"format_version=1, this code reads 2 \(2 added checksums\); rebuild"):
        open_cache(old)


def test_every_dataset_of_the_cache_is_checksummed(cache_path):
    with h5py.File(cache_path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert {"features", "labels", "paths", "split", "skipped"} <= set(names)
        for n in names:
            assert f[n].fletcher32 and f[n].chunks, n
        assert f.libver[0] in ("v110", "v112", "v114", "latest")


def test_checksum_cost_is_measured():
    from cache.checks import checksum_cost

    m = checksum_cost(rows=60, row_shape=(3, 3, 64), chunk_rows=20, repeats=1)
    assert m["plain_read_mb_s"] > 0 and m["checksummed_read_mb_s"] > 0 and "checksum_read_cost" in m


# -- moved or copied data -------------------------------------------------------------------------------------
def test_a_copied_data_folder_and_a_moved_cache_are_up_to_date(tmp_path, train_dir, cache_path, capsys):
    from extract.__main__ import main as extract_main
    from extract.verify import check_same_images as check_data

    data, cache = tmp_path / "elsewhere" / "train", tmp_path / "elsewhere" / "features.h5"
    shutil.copytree(train_dir, data)
    shutil.copyfile(cache_path, cache)
    assert extract_main(extract_args(data, cache)) == 0
    assert "up to date" in capsys.readouterr().out
    with open_cache(cache) as c:
        assert c.provenance["data"] == os.path.abspath(train_dir)  # recorded where it was made; not identity
        assert len(check_data(str(data), c).paths) == c.config["n_inputs"]  # stage 3 accepts the copy


def test_verify_content_catches_a_same_size_replacement_size_does_not(tmp_path):
    from extract.images import discover
    from extract.verify import inputs_fingerprint

    make_dataset(tmp_path / "d", n=8, seed=2)
    imgs = discover(tmp_path / "d")
    before = {m: inputs_fingerprint(imgs.root, imgs.paths, m) for m in ("size", "content")}
    victim = tmp_path / "d" / imgs.paths[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, other bytes
    victim.write_bytes(bytes(raw))
    after = {m: inputs_fingerprint(imgs.root, imgs.paths, m) for m in ("size", "content")}
    assert after["size"] == before["size"]  # the documented blind spot of VERIFY=size
    assert after["content"] != before["content"]


def test_verify_content_through_the_stage(tmp_path, capsys):
    from extract.__main__ import main as extract_main

    make_dataset(tmp_path / "d", n=12, seed=2)
    out = tmp_path / "f.h5"
    assert extract_main(extract_args(tmp_path / "d", out, "--verify", "content")) == 0
    assert extract_main(extract_args(tmp_path / "d", out, "--verify", "content")) == 0
    assert "up to date" in capsys.readouterr().out
    victim = sorted((tmp_path / "d").glob("*.jpg"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    from cache import cache_state, fingerprint
    from extract.__main__ import parse_args
    from extract.features import make_plan, resolve_config

    s = parse_args(extract_args(tmp_path / "d", out, "--verify", "content"))
    config = resolve_config(make_plan(s))
    assert config["verify"] == "content" and cache_state(str(out), fingerprint(config)) == "stale"


# -- real-world photos ----------------------------------------------------------------------------------------
def _photo(h=90, w=150):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 256], -1).astype(np.uint8)


def test_exif_orientation_6_gives_the_features_of_the_upright_pixels(tmp_path):
    from extract.__main__ import main as extract_main
    from extract.images import load_image

    raw = Image.fromarray(_photo())  # landscape as stored; orientation 6: the viewer turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    d = tmp_path / "photos"
    d.mkdir()
    raw.save(d / "1.png", exif=exif.tobytes())  # PNG: lossless, so the comparison can be exact
    raw.transpose(Image.Transpose.ROTATE_270).save(d / "2.png")  # the same pixels, upright, no EXIF
    raw.save(d / "3.png")  # the stored pixels without EXIF: must differ
    a, b, c = (load_image(d / f"{i}.png", IMG) for i in (1, 2, 3))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    raw.save(d / "4.jpg", quality=95, exif=exif.tobytes())  # JPEG + draft mode: still upright (portrait)
    up = load_image(d / "4.jpg", IMG).astype(int)
    assert np.abs(up - b).mean() < 8 < np.abs(up - c).mean()  # close to the upright one, far from the stored one
    assert extract_main(extract_args(d, tmp_path / "f.h5")) == 0
    with open_cache(tmp_path / "f.h5") as cache:
        x = cache.read(np.arange(len(cache)))
        rows = {p: i for i, p in enumerate(cache.paths)}
        np.testing.assert_array_equal(x[rows["1.png"]], x[rows["2.png"]])  # same pixels in, same features out
        assert not np.allclose(x[rows["1.png"]], x[rows["3.png"]])
        assert "EXIF orientation applied" in cache.config["resize"]


def test_huge_images_are_decoded_through_draft_mode_or_skipped_with_the_reason(tmp_path, monkeypatch):
    from extract import photos
    from extract.images import try_load

    big = tmp_path / "big.jpg"  # 196M pixels: PIL alone raises DecompressionBombError at open
    Image.new("L", (14000, 14000), 128).save(big, quality=50)
    img, reason = try_load(big, IMG)
    assert reason == "" and img.shape == (IMG, IMG, 3) and abs(int(img.mean()) - 128) <= 1  # via draft (1/8)
    monkeypatch.setattr(photos, "MAX_PIXELS", 150 * 150)  # the same rules on small files
    Image.fromarray(_photo(400, 400)).save(tmp_path / "p.png")
    Image.fromarray(_photo(800, 800)).save(tmp_path / "j.jpg")
    img, reason = try_load(tmp_path / "p.png", IMG)  # no draft for PNG: over the limit, skipped with the reason
    assert reason.startswith("TooLarge: 400x400 = 160,000 pixels after draft mode, over the limit") and not img.any()
    img, reason = try_load(tmp_path / "j.jpg", IMG)  # draft 1/8 -> 100x100, under the limit
    assert reason == "" and img.any()


# -- make data ------------------------------------------------------------------------------------------------
def _zip(path, entries):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries:
            z.writestr(name, data)
    return path


def _unpack(zip_path, out):
    return run_module("extract.unpack", "--zip", zip_path, "--out", out)


def test_zip_with_parent_or_absolute_entries_writes_nothing_outside_data(tmp_path):
    out = tmp_path / "work" / "data"
    for evil in ("../evil.txt", "train/../../evil.txt", "/tmp/evil-abs.txt", "..\\evil.txt"):
        z = _zip(tmp_path / "bad.zip", [("train/cat.0.jpg", b"x"), (evil, b"pwned")])
        _one_error_line(_unpack(z, out), "would be written outside", "nothing of it was unpacked")
    inner = _zip(tmp_path / "inner.zip", [("../../evil.txt", b"pwned")])
    z = _zip(tmp_path / "nested.zip", [("train.zip", inner.read_bytes())])
    _one_error_line(_unpack(z, out), "would be written outside")
    written = [os.path.relpath(os.path.join(d, f), tmp_path) for d, _, fs in os.walk(tmp_path) for f in fs]
    assert not [w for w in written if "evil" in w] and not os.path.exists("/tmp/evil-abs.txt")


def test_truncated_zip_exits_2_with_the_fix(tmp_path):
    z = _zip(tmp_path / "t.zip", [(f"train/cat.{i}.jpg", os.urandom(2000)) for i in range(5)])
    raw = z.read_bytes()
    z.write_bytes(raw[:len(raw) // 2])  # the central directory is gone
    _one_error_line(_unpack(z, tmp_path / "data"), "truncated or not a zip file", "download it again")
    with zipfile.ZipFile(z2 := tmp_path / "crc.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("train/cat.0.jpg", b"a" * 1000)
    raw = bytearray(z2.read_bytes())
    raw[100] ^= 0xFF  # inside the stored data: CRC mismatch
    z2.write_bytes(bytes(raw))
    _one_error_line(_unpack(z2, tmp_path / "data"), "damaged or cut short", "download the zip again")


def test_duplicate_test_ids_the_first_unpacked_wins(tmp_path):
    inner = _zip(tmp_path / "test.zip", [("test/2.jpg", b"nested"), ("test/3.jpg", b"three")])
    z = _zip(tmp_path / "k.zip", [("test/1.jpg", b"lower"), ("test/1.JPG", b"upper"), ("test/2.jpg", b"outer"),
                                  ("test.zip", inner.read_bytes())])
    r = _unpack(z, tmp_path / "data")
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(tmp_path / "data" / "test"))
    assert files == ["1.jpg", "2.jpg", "3.jpg"]
    assert (tmp_path / "data" / "test" / "1.jpg").read_bytes() == b"lower"
    assert (tmp_path / "data" / "test" / "2.jpg").read_bytes() == b"outer"  # outer zip before the nested one
    assert "duplicate: test/1.JPG" in r.stdout and "duplicate: test/2.jpg" in r.stdout and "wins" in r.stdout
