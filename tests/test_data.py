"""tbray.data.dataset on tiny generated data: finding the root, reading every PIL mode, skipped files, the split."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_bytes_named
from PIL import Image, PngImagePlugin

from tbray.data import dataset, demo, duplicates
from tbray.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def demo300(tmp_path_factory) -> Path:
    """300 synthetic 64 px images (250 Normal, 50 TB), never modified by a test."""
    return demo.make(tmp_path_factory.mktemp("d300") / "TB_Chest_Radiography_Database", n_images=300, size=64)


@pytest.fixture(scope="module")
def demo72(tmp_path_factory) -> Path:
    """72 synthetic 64 px images (60 Normal, 12 TB); tests copy it before changing anything."""
    return demo.make(tmp_path_factory.mktemp("d72") / "db", n_images=72, size=64)


def copy_of(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def skipped_reasons(found: dataset.Discovery) -> dict[str, str]:
    return dict(zip(found.skipped["path"], found.skipped["reason"]))


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def random_hex64(rng: np.random.Generator, n: int) -> list[str]:
    return [rng.bytes(32).hex() for _ in range(n)]


# ---------------------------------------------------------------- find_root


def test_find_root_accepts_the_root_and_its_parent(demo72):
    assert dataset.find_root(demo72) == demo72
    assert dataset.find_root(demo72.parent) == demo72


def test_find_root_and_labels_ignore_the_case_of_class_folders(tmp_path):
    root = tmp_path / "x"
    for folder, label in (("NORMAL", 0), ("tuberculosis", 1)):
        (root / folder).mkdir(parents=True)
        for i in range(3):
            value = 60 + 40 * i + 10 * label
            Image.new("L", (64, 64), value).save(root / folder / f"{folder}-{i}.png")
    assert dataset.find_root(tmp_path) == root
    found = dataset.discover(tmp_path, min_side=32)
    assert found.root == root
    labels = dict(zip(found.files["path"], found.files["label"]))
    assert labels == {**{f"NORMAL/NORMAL-{i}.png": 0 for i in range(3)},
                      **{f"tuberculosis/tuberculosis-{i}.png": 1 for i in range(3)}}


def test_find_root_refuses_a_missing_folder_one_class_and_a_foreign_folder(tmp_path):
    with pytest.raises(UserError, match="data folder not found"):
        dataset.find_root(tmp_path / "nope")
    (tmp_path / "one" / "Normal").mkdir(parents=True)
    with pytest.raises(UserError, match="only one class present; no Tuberculosis/"):
        dataset.find_root(tmp_path / "one")
    (tmp_path / "other" / "photos").mkdir(parents=True)
    with pytest.raises(UserError, match="not a TB chest X-ray data set"):
        dataset.find_root(tmp_path / "other")


# ---------------------------------------------------------------- image modes


def mode_images() -> dict[str, tuple[bytes, str, np.ndarray]]:
    """name -> (file bytes, suffix, expected gray uint8 array); every image 64x64."""
    top_bottom = np.zeros((64, 64), np.uint16)
    top_bottom[32:] = 65535
    top_bottom[:, :8] = 257 * 100  # exactly 100 after scaling
    expect16 = np.zeros((64, 64), np.uint8)
    expect16[32:] = 255
    expect16[:, :8] = 100
    bits = np.zeros((64, 64), bool)
    bits[:, 32:] = True
    palette = Image.new("P", (64, 64), 0)
    palette.putpalette([100, 100, 100, 255, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 64, 32))  # top half pure red: luminance 0.299 * 255 = 76
    expect_p = np.full((64, 64), 100, np.uint8)
    expect_p[:32] = 76
    full = lambda v: np.full((64, 64), v, np.uint8)  # noqa: E731
    return {
        "rgb_equal_channels": (png_bytes(Image.new("RGB", (64, 64), (100, 100, 100))), ".png", full(100)),
        "l": (png_bytes(Image.new("L", (64, 64), 77)), ".png", full(77)),
        "la_transparent": (png_bytes(Image.new("LA", (64, 64), (77, 0))), ".png", full(77)),
        "rgba_transparent": (png_bytes(Image.new("RGBA", (64, 64), (100, 100, 100, 0))), ".png", full(100)),
        "p": (png_bytes(palette), ".png", expect_p),
        "i16": (png_bytes(Image.fromarray(top_bottom)), ".png", expect16),
        "cmyk_white": (png_bytes(Image.new("CMYK", (64, 64), (0, 0, 0, 0)), "JPEG", quality=100), ".jpg",
                       full(255)),
        "cmyk_black": (png_bytes(Image.new("CMYK", (64, 64), (0, 0, 0, 255)), "JPEG", quality=100), ".jpeg",
                       full(0)),
        "one_bit": (png_bytes(Image.fromarray(bits)), ".png", np.where(bits, 255, 0).astype(np.uint8)),
        "l_jpeg": (png_bytes(Image.new("L", (64, 64), 200), "JPEG", quality=95), ".JPG", full(200)),
    }


def test_load_gray_reads_every_mode_as_uint8_gray(tmp_path):
    for name, (blob, suffix, expected) in mode_images().items():
        path = tmp_path / f"{name}{suffix}"
        path.write_bytes(blob)
        with Image.open(path) as im:  # the file really is in the mode the case is named after
            assert im.mode == {"rgb_equal_channels": "RGB", "l": "L", "la_transparent": "LA",
                               "rgba_transparent": "RGBA", "p": "P", "i16": "I;16", "cmyk_white": "CMYK",
                               "cmyk_black": "CMYK", "one_bit": "1", "l_jpeg": "L"}[name], name
        gray = dataset.load_gray(path)
        assert gray.dtype == np.uint8 and gray.shape == (64, 64), name
        tolerance = 1 if suffix.lower() in (".jpg", ".jpeg") else 0
        diff = np.abs(gray.astype(int) - expected.astype(int)).max()
        assert diff <= tolerance, f"{name}: max difference {diff}"


def test_sixteen_bit_scaling_endpoints():
    wide = Image.fromarray(np.array([[0, 257, 32896, 65535]], np.uint16))
    assert dataset.to_gray8(wide).tolist() == [[0, 1, 128, 255]]


def write_png(path: Path, pixels: np.ndarray, sbit: int | None = None) -> Path:
    """A real PNG of `pixels` (uint8 -> 8-bit, uint16 -> 16-bit gray), with an sBIT chunk if given."""
    info = PngImagePlugin.PngInfo()
    if sbit is not None:
        info.add(b"sBIT", bytes([sbit]))
    Image.fromarray(pixels).save(path, pnginfo=info)
    with Image.open(path) as im:
        assert im.mode == ("L" if pixels.dtype == np.uint8 else "I;16")
    return path


def gradient(top: int, dtype) -> np.ndarray:
    """A 64x64 ramp from 0 to exactly `top`, row by row."""
    return np.round(np.linspace(0, top, 64 * 64)).astype(dtype).reshape(64, 64)


@pytest.mark.parametrize("name, pixels, sbit, full_scale", [
    ("8-bit", gradient(255, np.uint8), None, 255),
    ("12-bit in a 16-bit PNG", gradient(4095, np.uint16), None, 4095),
    ("12-bit, brightest 3000", gradient(3000, np.uint16), None, 4095),
    ("16-bit", gradient(65535, np.uint16), None, 65535),
    ("12-bit stated by sBIT, dark", gradient(2000, np.uint16), 12, 4095),
    ("sBIT 12 but scaled to 16 bits as the PNG spec says", gradient(65535, np.uint16), 12, 65535),
    ("16-bit holding 8-bit values", gradient(200, np.uint16), None, 255),
])
def test_load_gray_scales_by_the_bit_depth_used(tmp_path, name, pixels, sbit, full_scale):
    gray = dataset.load_gray(write_png(tmp_path / "x.png", pixels, sbit))
    expected = np.floor(pixels.astype(np.float64) * 255 / full_scale + 0.5).astype(np.uint8)
    assert gray.dtype == np.uint8 and gray.min() == 0
    assert np.array_equal(gray, expected), name


def test_twelve_bit_gradient_spans_black_to_white(tmp_path):
    gray = dataset.load_gray(write_png(tmp_path / "x.png", gradient(4095, np.uint16)))
    assert gray.min() == 0 and gray.max() == 255
    assert abs(int(np.median(gray)) - 128) <= 1  # mid-grey stays mid-grey, not 8 of 255


def test_png_significant_bits_reads_the_stated_depth_only(tmp_path):
    assert dataset.png_significant_bits(write_png(tmp_path / "s.png", gradient(4095, np.uint16), 12)) == 12
    assert dataset.png_significant_bits(write_png(tmp_path / "n.png", gradient(4095, np.uint16))) is None
    (tmp_path / "x.jpg").write_bytes(png_bytes(Image.new("L", (8, 8)), "JPEG"))
    assert dataset.png_significant_bits(tmp_path / "x.jpg") is None


def test_discover_keeps_every_mode(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    for name, (blob, suffix, _) in mode_images().items():
        (root / "Tuberculosis" / f"mode-{name}{suffix}").write_bytes(blob)
    found = dataset.discover(root, min_side=32)
    assert found.skipped.empty, found.skipped.to_dict("records")
    names = set(found.files["path"])
    assert {f"Tuberculosis/mode-{n}{s}" for n, (_, s, _) in mode_images().items()} <= names
    assert len(found.files) == 72 + len(mode_images())


# ---------------------------------------------------------------- skipped files


def test_discover_names_every_unusable_file_and_why(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    normal, tb = root / "Normal", root / "Tuberculosis"
    good = (normal / "Normal-1.png").read_bytes()
    (normal / "empty.png").write_bytes(b"")
    (normal / "truncated.png").write_bytes(good[: len(good) // 2])
    (normal / "text.png").write_text("this is not a PNG\n")
    (normal / "notes.txt").write_text("reading notes")
    Image.new("L", (20, 20), 128).save(tb / "tiny.png")
    Image.new("L", (48, 20), 128).save(tb / "flat.png")  # one side too short is enough
    os.symlink("loop-b.png", tb / "loop-a.png")
    os.symlink("loop-a.png", tb / "loop-b.png")
    (tb / "sub").mkdir()
    (tb / "sub" / "nested.png").write_bytes(b"")  # subfolders are searched, not ignored
    (root / "masks").mkdir()
    (root / "metadata.xlsx").write_bytes(b"x")

    found = dataset.discover(root, min_side=32)
    reasons = skipped_reasons(found)
    assert reasons == {
        "Normal/empty.png": "empty file (0 bytes)",
        "Normal/truncated.png": reasons["Normal/truncated.png"],
        "Normal/text.png": "not an image Pillow can identify",
        "Normal/notes.txt": "not an image file (extension '.txt')",
        "Tuberculosis/tiny.png": "too small for a chest X-ray: 20x20 px, minimum 32 px a side",
        "Tuberculosis/flat.png": "too small for a chest X-ray: 48x20 px, minimum 32 px a side",
        "Tuberculosis/loop-a.png": "symlink loop",
        "Tuberculosis/loop-b.png": "symlink loop",
        "Tuberculosis/sub/nested.png": "empty file (0 bytes)",
    }
    assert reasons["Normal/truncated.png"].startswith("truncated or corrupt image (")
    assert found.ignored == ["README.txt", "demo.json", "masks", "metadata.xlsx"]
    assert len(found.files) == 72 and not set(found.files["path"]) & set(reasons)
    assert set(found.files.columns) == {"path", "label", "sha256", "phash"}


def test_file_names_that_are_not_utf8_are_skipped_and_shown_readably(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    good = (root / "Normal" / "Normal-1.png").read_bytes()
    write_bytes_named(root / "Normal", b"bad\xffname.png", good)  # a good image under a bad name
    write_bytes_named(root / "Tuberculosis", b"notes\xfe.txt", b"x")
    os.mkdir(os.fsencode(root / "Tuberculosis") + b"/folder\xff")
    write_bytes_named(root / "Tuberculosis" / os.fsdecode(b"folder\xff"), b"TB-x.png", good)
    write_bytes_named(root, b"beside\xff", b"x")

    found = dataset.discover(root, min_side=32)
    assert skipped_reasons(found) == {
        "Normal/bad\ufffdname.png": "file name is not valid UTF-8",
        "Tuberculosis/notes\ufffd.txt": "file name is not valid UTF-8",
        "Tuberculosis/folder\ufffd/TB-x.png": "file name is not valid UTF-8",
    }
    assert "beside\ufffd" in found.ignored
    assert len(found.files) == 72
    found.skipped.to_csv(tmp_path / "skipped.csv", index=False)  # UTF-8, as prepare writes it
    assert (tmp_path / "skipped.csv").read_text(encoding="utf-8").count("\ufffd") == 3


def test_a_search_goes_on_past_a_file_name_that_is_not_utf8(finished_run):
    """The shared finished search's data hold one TB file named b"TB-\\xff.png" (conftest.finished_run)."""
    run, done = finished_run.folder, finished_run.console
    skipped = pd.read_csv(run / "skipped.csv", encoding="utf-8")
    assert skipped.to_dict("records") == [{"path": "Tuberculosis/TB-\ufffd.png",
                                           "reason": "file name is not valid UTF-8"}]
    assert len(pd.read_csv(run / "split.csv", encoding="utf-8")) == 72
    assert "Tuberculosis/TB-\ufffd.png: file name is not valid UTF-8" in done.stdout  # told, not dropped
    assert (run / "report.json").is_file()


def test_image_over_the_decompression_bomb_limit_is_skipped(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    side = 9500  # 90.25 M pixels: over Pillow's 89.5 M limit, under twice it, where Pillow only warns
    assert Image.MAX_IMAGE_PIXELS < side * side < 2 * Image.MAX_IMAGE_PIXELS
    Image.new("1", (side, side)).save(root / "Tuberculosis" / "huge.png", compress_level=9)
    assert (root / "Tuberculosis" / "huge.png").stat().st_size < 100_000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        found = dataset.discover(root, min_side=32)
    assert skipped_reasons(found) == {
        "Tuberculosis/huge.png": f"larger than Pillow's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS} pixels"}


def test_bomb_check_holds_in_every_thread_and_leaves_warning_filters_alone(tmp_path, demo72, monkeypatch):
    """Regression: a catch_warnings() filter per decode raced between discover's threads, so some images in
    Pillow's warn-only zone were decoded and kept, and an "error" filter leaked into the whole process."""
    root = copy_of(demo72, tmp_path / "db")
    for folder in ("Normal", "Tuberculosis"):
        Image.new("L", (48, 48), 90).save(root / folder / "small-enough.png")  # 2,304 px: under the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # every 64x64 demo image (4,096 px) is now a bomb
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            before = list(warnings.filters)
            found = dataset.discover(root, min_side=32, threads=8)
            assert list(warnings.filters) == before
        assert sorted(found.files["path"]) == ["Normal/small-enough.png", "Tuberculosis/small-enough.png"]
        assert len(found.skipped) == 72
        assert set(found.skipped["reason"]) == {"larger than Pillow's decompression-bomb limit of 3000 pixels"}


# Everything is imported (and Pillow's plugins loaded by a first pass) while still root: this
# interpreter's standard library lives under /root, which user nobody can't read.
UNREADABLE_PROBE = """
import json, os, sys
from tbray.data import dataset
assert len(dataset.discover(sys.argv[1], min_side=32).skipped) == 0
try:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
except PermissionError:
    sys.exit(3)
assert os.geteuid() == 65534
found = dataset.discover(sys.argv[1], min_side=32)
print(json.dumps(dict(zip(found.skipped["path"], found.skipped["reason"]))))
"""


def test_unreadable_file_is_skipped_with_the_os_reason(demo72):
    """Root reads through chmod 000, so the check runs as user nobody (uid 65534) in a child process."""
    base = Path(tempfile.mkdtemp(prefix="tbray-unreadable-"))  # pytest's tmp_path is closed to other users
    try:
        os.chmod(base, 0o755)
        root = copy_of(demo72, base / "db")
        for p in [root, *root.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(root / "Normal" / "Normal-3.png", 0o000)
        if os.geteuid() == 0:
            done = subprocess.run([sys.executable, "-c", UNREADABLE_PROBE, str(root)], cwd=REPO,
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"})
            if done.returncode == 3:
                pytest.skip("cannot drop root privileges here (setuid refused), so chmod 000 can't be tested")
            assert done.returncode == 0, done.stderr[-2000:]
            reasons = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            reasons = skipped_reasons(dataset.discover(root, min_side=32))
        assert reasons == {"Normal/Normal-3.png": "unreadable: Permission denied"}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_class_with_no_usable_image_stops_discovery(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    for p in (root / "Tuberculosis").iterdir():
        p.write_bytes(b"")
    with pytest.raises(UserError, match=r"Tuberculosis: class folder has no usable image"):
        dataset.discover(root, min_side=32)
    shutil.rmtree(root / "Tuberculosis")
    (root / "Tuberculosis").mkdir()
    with pytest.raises(UserError, match=r"Tuberculosis: class folder is empty"):
        dataset.discover(root, min_side=32)


# ---------------------------------------------------------------- the split


def test_split_is_stratified_70_20_10_per_class():
    """Without duplicates, every class is cut 70/20/10 to within one image."""
    rng = np.random.default_rng(1)
    n = {0: 250, 1: 50}
    files = pd.DataFrame({
        "path": [f"{'Normal' if y == 0 else 'Tuberculosis'}/{i}.png" for y in n for i in range(n[y])],
        "label": [y for y in n for _ in range(n[y])],
        "sha256": [f"{i:064x}" for i in range(300)],
        "phash": random_hex64(rng, 300),
    })
    assert len(set(duplicates.duplicate_groups(files["sha256"], files["phash"]))) == 300  # no chance duplicates
    for seed in (0, 1, 2):
        split = dataset.make_split(files, seed)
        for label, total in n.items():
            counts = split.loc[split["label"] == label, "split"].value_counts()
            for part, share in dataset.FRACTIONS.items():
                assert abs(counts.get(part, 0) - share * total) <= 1, (seed, label, part, counts.to_dict())


def test_split_of_demo_images_is_stratified_by_duplicate_group(demo300):
    """On real files the unit is the duplicate group: 70/20/10 of each class's groups, to within one."""
    files = dataset.discover(demo300, min_side=32).files
    split = dataset.make_split(files, 0)
    groups = duplicates.duplicate_groups(files["sha256"].tolist(), files["phash"].tolist())
    per_group = pd.DataFrame({"group": groups, "label": split["label"], "split": split["split"]}).groupby("group")
    assert (per_group["split"].nunique() == 1).all()
    reps = per_group.agg(label=("label", "max"), split=("split", "first"))
    for label in (0, 1):
        counts = reps.loc[reps["label"] == label, "split"].value_counts()
        total = counts.sum()
        for part, share in dataset.FRACTIONS.items():
            assert abs(counts.get(part, 0) - share * total) <= 1, (label, part, counts.to_dict())


def test_split_is_deterministic_and_disjoint(demo300, tmp_path):
    files = dataset.discover(demo300, min_side=32).files
    a, b, c = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    dataset.write_split(dataset.make_split(files, 7), a)
    dataset.write_split(dataset.make_split(dataset.discover(demo300, min_side=32, threads=1).files, 7), b)
    dataset.write_split(dataset.make_split(files, 8), c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    saved = pd.read_csv(a)
    assert list(saved.columns) == dataset.SPLIT_COLUMNS + ["phash"]
    assert saved["path"].is_unique and len(saved) == 300
    assert set(saved["split"]) == {"train", "val", "test"}
    parts = {s: set(saved.loc[saved["split"] == s, "path"]) for s in dataset.FRACTIONS}
    assert not (parts["train"] & parts["val"] or parts["train"] & parts["test"] or parts["val"] & parts["test"])


def test_exact_and_near_duplicates_stay_in_one_split(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    originals = ["Normal/Normal-5.png", "Normal/Normal-40.png", "Tuberculosis/Tuberculosis-2.png"]
    copies = {}
    for rel in originals:
        src = root / rel
        exact = src.with_name(f"copy-of-{src.name}")
        shutil.copyfile(src, exact)
        near = src.with_name(f"reencoded-{src.stem}.jpg")
        with Image.open(src) as im:
            im.convert("L").save(near, format="JPEG", quality=85)
        copies[rel] = [exact.relative_to(root).as_posix(), near.relative_to(root).as_posix()]
    files = dataset.discover(root, min_side=32).files
    h = dict(zip(files["path"], files["phash"]))
    for rel, (exact, near) in copies.items():  # the re-encode changed the bytes but not the picture
        assert files.set_index("path").loc[near, "sha256"] != files.set_index("path").loc[rel, "sha256"]
        distance = bin(int(h[rel], 16) ^ int(h[near], 16)).count("1")
        assert distance <= duplicates.NEAR_DUPLICATE_MAX_DISTANCE, (rel, distance)
    seen = set()
    for seed in range(6):
        where = dict(zip(*dataset.make_split(files, seed)[["path", "split"]].T.values))
        for rel, group in copies.items():
            assert {where[p] for p in group} == {where[rel]}, (seed, rel)
            seen.add(where[rel])
    assert len(seen) > 1  # the groups really move between splits across seeds


def test_read_split_reuses_a_saved_split_exactly(demo300, tmp_path):
    files = dataset.discover(demo300, min_side=32).files
    made = dataset.make_split(files, 3)
    dataset.write_split(made, tmp_path / "split.csv")
    again = dataset.read_split(tmp_path / "split.csv", files.sample(frac=1, random_state=0))
    left = made.set_index("path")[["label", "split", "sha256"]].sort_index()
    right = again.set_index("path")[["label", "split", "sha256"]].sort_index()
    pd.testing.assert_frame_equal(left, right)
    assert dataset.split_hash(again) == dataset.split_hash(made)
    assert set(again.columns) >= {"path", "label", "split", "sha256", "phash"}


def test_read_split_refuses_a_changed_or_missing_file(tmp_path, demo72):
    root = copy_of(demo72, tmp_path / "db")
    csv = tmp_path / "split.csv"
    dataset.write_split(dataset.make_split(dataset.discover(root, min_side=32).files, 0), csv)

    target = root / "Tuberculosis" / "Tuberculosis-4.png"
    with Image.open(target) as im:
        pixels = np.asarray(im.convert("L")).copy()
    pixels[0, 0] ^= 1  # one pixel, one bit
    Image.fromarray(pixels).save(target)
    with pytest.raises(UserError, match=r"1 file\(s\) changed since the split was made, first "
                                        r"Tuberculosis/Tuberculosis-4.png") as err:
        dataset.read_split(csv, dataset.discover(root, min_side=32).files)
    assert str(csv) in str(err.value)

    target.unlink()
    with pytest.raises(UserError, match=r"missing or unusable now, first Tuberculosis/Tuberculosis-4.png"):
        dataset.read_split(csv, dataset.discover(root, min_side=32).files)


def test_read_split_refuses_files_that_are_not_splits(tmp_path, demo72):
    files = dataset.discover(demo72, min_side=32).files
    cases = {
        "random.csv": "a,b,c\n1,2,3\n4,5,6\n",
        "empty.csv": "",
        "binary.csv": bytes(range(256)) * 4,
        "badsplit.csv": "path,label,split,sha256\nNormal/Normal-1.png,0,holdout,abc\n",
    }
    expected = {"random.csv": "not a split file, missing column(s) label, path, sha256, split",
                "empty.csv": "unreadable split file", "binary.csv": "unreadable split file",
                "badsplit.csv": "unknown split value(s) holdout"}
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(UserError) as err:
            dataset.read_split(path, files)
        assert str(err.value).startswith(f"{path}: {expected[name]}"), str(err.value)
    with pytest.raises(UserError, match="unreadable split file"):
        dataset.read_split(tmp_path / "does-not-exist.csv", files)
