"""Archive-scale jobs (issue 27, 1): `mnv2 predict MODEL DIR --out results.jsonl` appends one line per image, and the
same command continues a job that was killed, without duplicating or losing an image."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnv2.cli import main

ROOT = Path(__file__).parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "raccoon" / "images"
CLASSIFIER = ROOT / "examples" / "models" / "fashion_mnist_mnv2.safetensors"
DETECTOR = ROOT / "examples" / "models" / "raccoon_ssdlite_mnv2.safetensors"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """300 real photos (the raccoon set's, each used 1-2 times) in nested folders, with 4 corrupt files among them."""
    root = tmp_path_factory.mktemp("archive") / "cam"
    photos = sorted(PHOTOS.glob("*.jpg"))
    for i in range(300):
        d = root / f"site{i % 3}" / f"day{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(photos[i % len(photos)], d / f"img{i:04d}.jpg")
    for i in range(4):
        (root / f"site{i % 3}" / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated" * (i + 1))
    return root


def job(model, inputs, out, *extra) -> list[str]:
    mnv2 = Path(sys.executable).parent / "mnv2"
    return [str(mnv2), "predict", str(model), *map(str, inputs), "--out", str(out), "--threads", "1", *extra]


def lines(path: Path) -> list[dict]:
    return [json.loads(t) for t in path.read_text().splitlines()]


def test_a_job_killed_part_way_and_rerun_equals_an_uninterrupted_one(archive, tmp_path):
    full = tmp_path / "full.jsonl"
    subprocess.run(job(CLASSIFIER, [archive], full), check=True, capture_output=True)
    rows = lines(full)
    assert len(rows) == 304 and len({(r["root"], r["path"]) for r in rows}) == 304
    assert sum("error" in r for r in rows) == 4 and all("top" in r for r in rows if "error" not in r)
    assert {r["path"] for r in rows if "error" in r} == {f"site{i % 3}/broken{i}.jpg" for i in range(4)}
    assert rows[0]["path"] == "site0/broken0.jpg" and rows[0]["root"] == str(archive)
    ok = next(r for r in rows if "error" not in r)
    assert (ok["width"], ok["height"]) > (0, 0)
    summary = json.loads((tmp_path / "full.jsonl.summary.json").read_text())
    assert (summary["done"], summary["failed"], summary["skipped"]) == (300, 4, 0)

    cut = tmp_path / "cut.jsonl"
    proc = subprocess.Popen(job(CLASSIFIER, [archive], cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not cut.exists() or cut.read_bytes().count(b"\n") < 60):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = cut.read_bytes().count(b"\n")
    assert 60 <= written < 304  # killed part-way
    with open(cut, "ab") as f:  # as if the kill had come mid-line
        f.write(b'{"root": "x", "pa')
    out = subprocess.run(job(CLASSIFIER, [archive], cut), check=True, capture_output=True, text=True).stdout
    assert "repaired a torn last line" in out
    summary = json.loads((tmp_path / "cut.jsonl.summary.json").read_text())
    assert (summary["done"] + summary["failed"], summary["skipped"]) == (304 - written, written)
    assert cut.read_text() == full.read_text()  # every image exactly once, the same results, the same order
    again = subprocess.run(job(CLASSIFIER, [archive], cut), check=True, capture_output=True, text=True).stdout
    assert "0 done, 0 failed, 304 skipped" in again and cut.read_text() == full.read_text()


def test_job_results_are_the_image_paths_results(tmp_path, capsys):
    """A job's lines hold what `mnv2 predict --json` gives for the same photos (the one inference path)."""
    photos = sorted(PHOTOS.glob("*.jpg"))[:6]
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos:
        shutil.copy(p, folder / p.name)
    assert main(["predict", str(DETECTOR), str(folder), "--out", str(tmp_path / "r.jsonl"), "--threads", "1"]) == 0
    assert "6 done, 0 failed, 0 skipped" in capsys.readouterr().out
    assert main(["predict", str(DETECTOR), *map(str, sorted(folder.iterdir())), "--json", "--threads", "1"]) == 0
    direct = json.loads(capsys.readouterr().out)
    rows = lines(tmp_path / "r.jsonl")
    assert [r["path"] for r in rows] == [Path(d["path"]).name for d in direct]
    for r, d in zip(rows, direct):
        assert r["detections"] == d["detections"] and (r["width"], r["height"]) == (d["width"], d["height"])


def _one_error_line(err: str, needle: str) -> None:
    lines_ = [t for t in err.splitlines() if t.strip()]
    assert len(lines_) == 1 and lines_[0].startswith("mnv2: error:") and needle in lines_[0], err


def test_a_results_file_that_cannot_be_opened_or_written_is_one_line_and_stays_whole(tmp_path, capsys, monkeypatch):
    """Read-only (EROFS) at open, a full disk (ENOSPC) mid-job: one line, exit 2, the file as it was (whole lines)
    and the same command continues it. (The tests run as root, who may write a read-only file: the errors are
    raised where the job opens and writes its file.)"""
    import builtins

    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:70]:  # two batches of the classifier's 64
        shutil.copy(p, folder / p.name)
    out = tmp_path / "r.jsonl"
    argv = ["predict", str(CLASSIFIER), str(folder), "--out", str(out), "--threads", "1"]
    real_open = builtins.open

    def read_only(path, mode="r", *a, **kw):
        if str(path) == str(out) and "a" in mode:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, mode, *a, **kw)

    monkeypatch.setattr("mnv2.deploy.runtime.jobs.open", read_only, raising=False)
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, "Read-only file system")
    assert not out.exists() or out.read_text() == ""

    class Full:  # the disk fills during the second batch's lines: part of them reaches the disk
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, text):
            self.writes += 1
            if self.writes > 1:
                self.f.write(text[: len(text) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def full_disk(path, mode="r", *a, **kw):
        f = real_open(path, mode, *a, **kw)
        return Full(f) if str(path) == str(out) and "a" in mode else f

    monkeypatch.setattr("mnv2.deploy.runtime.jobs.open", full_disk, raising=False)
    assert main([*argv, "--topk", "2"]) == 2
    _one_error_line(capsys.readouterr().err, "No space left on device")
    text = out.read_text()
    assert text.endswith("\n") and len(lines(out)) == 64  # whole lines only: the torn batch was cut off
    monkeypatch.undo()
    assert main([*argv, "--topk", "2"]) == 0
    assert len(lines(out)) == 70 and len({r["path"] for r in lines(out)}) == 70


def test_a_file_that_is_not_a_job_is_never_appended_to(tmp_path, capsys):
    out = tmp_path / "notes.jsonl"
    out.write_text('{"a": 1}\n')
    assert main(["predict", str(CLASSIFIER), str(PHOTOS / "raccoon-1.jpg"), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "line 1 is not a result line of an mnv2 job")
    assert out.read_text() == '{"a": 1}\n'
    out.write_bytes(b"\xff\xfe not text\n")  # not UTF-8 either
    assert main(["predict", str(CLASSIFIER), str(PHOTOS / "raccoon-1.jpg"), "--out", str(out)]) == 2
    _one_error_line(capsys.readouterr().err, "line 1 is not a result line of an mnv2 job")


def test_the_ray_path_on_a_local_cluster_writes_and_continues_the_local_file(tmp_path):
    """Issue 27, 3: `--ray ADDRESS` runs the job's model on a Ray cluster's actors (`local`: one started for the job,
    every port on 127.0.0.1) and writes the same file as the local path; a cut file is continued the same way."""
    folder = tmp_path / "photos"
    for i, p in enumerate(sorted(PHOTOS.glob("*.jpg"))[:40]):
        (folder / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / f"d{i % 3}" / p.name)
    (folder / "d0" / "broken.jpg").write_bytes(b"not a jpeg")
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    subprocess.run(job(CLASSIFIER, [folder], local), check=True, capture_output=True)
    argv = job(CLASSIFIER, [folder], remote, "--ray", "local")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "40 done, 1 failed, 0 skipped" in out
    assert remote.read_text() == local.read_text()
    text = remote.read_text().splitlines(keepends=True)
    remote.write_text("".join(text[:15]) + text[15][:20])  # a job cut mid-line
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "repaired a torn last line" in out and "15 skipped" in out
    assert remote.read_text() == local.read_text()


@pytest.fixture
def small_disk(tmp_path):
    """A 12 kB tmpfs (the tests run as root, as CI does): a disk that fills, or is remounted read-only."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small disk needs root (CI runs as root)")
def test_a_real_full_or_read_only_disk_is_one_line_and_the_file_stays_whole(small_disk, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:70]:
        shutil.copy(p, folder / p.name)
    out = small_disk / "r.jsonl"
    argv = ["predict", str(DETECTOR), str(folder), "--out", str(out), "--threads", "1"]
    assert main(argv) == 2  # 70 lines of ~200 bytes, written 16 at a time, do not fit in 12 kB
    _one_error_line(capsys.readouterr().err, "No space left on device")
    kept = out.read_text()
    assert kept.endswith("\n") and 0 < len(lines(out)) < 70  # whole lines only
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, "Read-only file system")
    assert out.read_text() == kept  # untouched
    subprocess.run(["mount", "-o", "remount,rw,size=1m", str(small_disk)], check=True)
    assert main(argv) == 0  # the same command continues it
    assert len(lines(out)) == 70 and len({r["path"] for r in lines(out)}) == 70
