"""User samples: the .npz and image-folder layouts, validation errors, splits and bounded batches."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from converter._errors import InvalidOptionsError
from converter.data import ImageSpec, load_samples
from converter.formats._base import InputSpec

SPEC = [InputSpec("x", ("batch", 1, 8, 8), np.dtype(np.float32))]


def _npz(path, compressed=False, **arrays):
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_batches_match_the_arrays(tmp_path, compressed):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 1, 8, 8))
    y = rng.integers(0, 3, 10)
    s = load_samples(_npz(tmp_path / "d.npz", compressed, inputs=x, labels=y), SPEC)
    assert (s.count, s.names, s.has_labels, s.num_classes) == (10, ["x"], True, int(y.max()) + 1)
    got = list(s.batches(4))
    assert [b[0]["x"].shape[0] for b in got] == [4, 4, 2]
    assert all(b[0]["x"].dtype == np.float32 for b in got)
    np.testing.assert_allclose(np.concatenate([b[0]["x"] for b in got]), x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in got]), y)


def test_stored_members_are_memory_mapped(tmp_path):
    s = load_samples(_npz(tmp_path / "d.npz", inputs=np.zeros((6, 1, 8, 8), np.float32)), SPEC)
    assert isinstance(s._source.arrays["x"], np.memmap)


def test_named_inputs_and_a_scalar_constant(tmp_path):
    specs = [InputSpec("audio", ("b", 16), np.dtype(np.float32)), InputSpec("rate", (), np.dtype(np.int64))]
    path = _npz(tmp_path / "d.npz", audio=np.ones((5, 16)), rate=np.array(16000))
    s = load_samples(path, specs)
    (batch, labels), = list(s.batches(8))
    assert labels is None and not s.has_labels
    assert batch["audio"].shape == (5, 16) and batch["rate"].shape == () and int(batch["rate"]) == 16000


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    s = load_samples(_npz(tmp_path / "d.npz", inputs=np.arange(50, dtype=np.float32).reshape(50, 1, 1, 1)
                          * np.ones((1, 1, 8, 8), np.float32)), SPEC)
    a, b = s.split(0.2, seed=3)
    assert (a.count, b.count) == (40, 10)
    ids = lambda v: [int(x["x"][i, 0, 0, 0]) for x, _ in v.batches(7) for i in range(x["x"].shape[0])]  # noqa: E731
    assert sorted(ids(a) + ids(b)) == list(range(50))
    assert ids(s.split(0.2, seed=3)[1]) == ids(b)
    assert ids(s.split(0.2, seed=4)[1]) != ids(b)


def test_fixed_batch_dim_caps_the_batch(tmp_path):
    specs = [InputSpec("x", (1, 1, 8, 8), np.dtype(np.float32))]
    s = load_samples(_npz(tmp_path / "d.npz", inputs=np.zeros((3, 1, 8, 8))), specs)
    assert [b["x"].shape[0] for b, _ in s.batches(64)] == [1, 1, 1]


def test_batches_stay_bounded(tmp_path):
    """Streaming: what a batch holds depends on the batch size, not on the number of samples."""
    s = load_samples(_npz(tmp_path / "d.npz", compressed=True, inputs=np.zeros((400, 1, 8, 8))), SPEC)
    sizes = {b["x"].nbytes for b, _ in s.batches(16)}
    assert max(sizes) == 16 * 64 * 4


BAD = [
    ("shape", dict(inputs=np.zeros((4, 1, 9, 8))), "fixes dim 2 to 8"),
    ("dims", dict(inputs=np.zeros((4, 8, 8))), "has 3 dims"),
    ("dtype", dict(inputs=np.zeros((4, 1, 8, 8), np.complex64)), "complex64"),
    ("nan", dict(inputs=np.full((4, 1, 8, 8), np.nan)), "NaN"),
    ("inf", dict(inputs=np.r_[np.zeros((2, 1, 8, 8)), np.full((1, 1, 8, 8), np.inf)]), "first in sample 2"),
    ("float labels", dict(inputs=np.zeros((4, 1, 8, 8)), labels=np.zeros(4)), "integer class indices"),
    ("label count", dict(inputs=np.zeros((4, 1, 8, 8)), labels=np.zeros(3, int)), "one class index per sample"),
    ("negative label", dict(inputs=np.zeros((4, 1, 8, 8)), labels=-np.ones(4, int)), ">= 0"),
    ("unknown array", dict(inputs=np.zeros((4, 1, 8, 8)), extra=np.zeros(4)), "'extra' match no model input"),
    ("no rows", dict(inputs=np.zeros((0, 1, 8, 8))), "0 samples"),
    ("strings", dict(inputs=np.array(["a", "b"])), "only numeric arrays"),
]


@pytest.mark.parametrize(("case", "arrays", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_npz_is_one_line_error(tmp_path, case, arrays, message):
    with pytest.raises(InvalidOptionsError, match=message) as e:
        load_samples(_npz(tmp_path / "d.npz", **arrays), SPEC)
    assert "\n" not in str(e.value)


def test_label_out_of_range_for_the_model(tmp_path):
    path = _npz(tmp_path / "d.npz", inputs=np.zeros((4, 1, 8, 8)), labels=np.array([0, 1, 2, 10]))
    with pytest.raises(InvalidOptionsError, match="label 10 is out of range for a model with 10 classes"):
        load_samples(path, SPEC, num_classes=10)


def test_pickled_array_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, inputs=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidOptionsError, match="pickled"):
        load_samples(path, SPEC)


def test_empty_and_non_npz_files(tmp_path):
    (tmp_path / "e.npz").write_bytes(b"")
    with pytest.raises(InvalidOptionsError, match="is empty"):
        load_samples(tmp_path / "e.npz", SPEC)
    (tmp_path / "t.npz").write_text("hello")
    with pytest.raises(InvalidOptionsError, match=r"not a \.npz"):
        load_samples(tmp_path / "t.npz", SPEC)
    with pytest.raises(InvalidOptionsError, match="not found"):
        load_samples(tmp_path / "missing.npz", SPEC)


def test_archive_path_tricks_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    buf = tmp_path / "x.npy"
    np.save(buf, np.zeros((2, 1, 8, 8), np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.write(buf, "../../inputs.npy")
    with pytest.raises(InvalidOptionsError, match=r"not a plain \.npy name"):
        load_samples(path, SPEC)


def test_oversized_member_is_refused(tmp_path, monkeypatch):
    import converter.data._npz as data

    monkeypatch.setattr(data, "MAX_DATA_BYTES", 1000)
    with pytest.raises(InvalidOptionsError, match="more than"):
        load_samples(_npz(tmp_path / "d.npz", inputs=np.zeros((10, 1, 8, 8))), SPEC)


def test_truncated_member_is_refused(tmp_path):
    path = tmp_path / "d.npz"
    buf = tmp_path / "x.npy"
    np.save(buf, np.zeros((4, 1, 8, 8), np.float32))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("inputs.npy", buf.read_bytes()[:-100])
    with pytest.raises(InvalidOptionsError, match="truncated"):
        load_samples(path, SPEC)


# --- image folders ---


def _images(root, classes=("cat", "dog"), per=3, size=(10, 12), mode="L"):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / c / f"{i}.png")
    return root


def test_image_folder_labels_and_preprocessing(tmp_path):
    from PIL import Image

    root = _images(tmp_path / "imgs")
    spec = ImageSpec(size=(8, 8), mean=(0.5,), std=(0.25,), value_range="0-1")
    s = load_samples(root, SPEC, image_spec=spec)
    assert (s.count, s.num_classes, s.class_names) == (6, 2, ["cat", "dog"])
    (x, y), = list(s.batches(16))
    assert x["x"].shape == (6, 1, 8, 8) and x["x"].dtype == np.float32
    np.testing.assert_array_equal(y, [0, 0, 0, 1, 1, 1])
    with Image.open(root / "cat" / "0.png") as im:
        ref = np.asarray(im.convert("L").resize((8, 8), Image.Resampling.BILINEAR), np.float32) / 255.0
    np.testing.assert_allclose(x["x"][0, 0], (ref - 0.5) / 0.25, rtol=1e-5, atol=1e-5)


def test_image_folder_nhwc_rgb(tmp_path):
    root = _images(tmp_path / "imgs", mode="RGB")
    specs = [InputSpec("img", ("n", 8, 8, 3), np.dtype(np.float32))]
    spec = ImageSpec(size=(8, 8), mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2), layout="NHWC", value_range="0-255")
    (x, _), = list(load_samples(root, specs, image_spec=spec).batches(16))
    assert x["img"].shape == (6, 8, 8, 3)


def test_image_folder_errors(tmp_path):
    root = _images(tmp_path / "imgs")
    with pytest.raises(InvalidOptionsError, match="give its preprocessing"):
        load_samples(root, SPEC)
    with pytest.raises(InvalidOptionsError, match="does not fit the model input"):
        load_samples(root, SPEC, image_spec=ImageSpec(size=(9, 9)))
    (root / "cat" / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InvalidOptionsError, match=r"cat/bad\.png is not a readable"):
        load_samples(root, SPEC, image_spec=ImageSpec(size=(8, 8)))
    (root / "cat" / "bad.png").unlink()
    (root / "cat" / "link.png").symlink_to(root / "dog" / "0.png")
    with pytest.raises(InvalidOptionsError, match="link"):
        load_samples(root, SPEC, image_spec=ImageSpec(size=(8, 8)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidOptionsError, match="no class folders"):
        load_samples(empty, SPEC, image_spec=ImageSpec(size=(8, 8)))


def test_image_spec_from_config():
    from converter import ConversionConfig
    from converter.data import image_spec_from

    assert image_spec_from(ConversionConfig()) is None
    cfg = ConversionConfig.from_options(image_size="24x32", image_mean="0.485,0.456,0.406", image_std=[0.2],
                                        image_layout="NHWC", image_range="0-255", image_channels=3)
    spec = image_spec_from(cfg)
    assert spec == ImageSpec(size=(24, 32), mean=(0.485, 0.456, 0.406), std=(0.2,), layout="NHWC",
                             value_range="0-255", channels=3)
    assert image_spec_from(ConversionConfig(image_size="28")).size == (28, 28)
    with pytest.raises(InvalidOptionsError, match="channels must be 1 or 3"):
        image_spec_from(ConversionConfig(image_size="28", image_channels=2))
