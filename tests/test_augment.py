"""fastnn.augment: shapes and layouts, seeding, what a shift, a crop and a flip do to known
images, noise statistics, and the Augment pipeline."""

import numpy as np
import pytest

from fastnn import augment as A
from fastnn._backend import to_numpy


def numbered(xp, n=6, c=2, h=5, w=7, dtype=np.float64):
    """Images whose pixels hold distinct positive values, so any move is visible."""
    return xp.asarray((np.arange(n * c * h * w).reshape(n, c, h, w) + 1).astype(dtype))


def test_gaussian_noise_statistics_dtype_and_seeding(xp):
    X = xp.zeros((200, 50), dtype=xp.float32)
    noisy = A.gaussian_noise(X, 0.3, rng=0)
    assert noisy.dtype == np.float32 and noisy.shape == X.shape
    values = to_numpy(noisy)
    assert abs(values.mean()) < 0.01 and values.std() == pytest.approx(0.3, rel=0.02)
    np.testing.assert_array_equal(to_numpy(A.gaussian_noise(X, 0.3, rng=0)), values)
    assert not np.array_equal(to_numpy(A.gaussian_noise(X, 0.3, rng=1)), values)
    assert float(abs(X).max()) == 0.0  # input untouched
    np.testing.assert_array_equal(to_numpy(A.gaussian_noise(X + 1, 0.0, rng=0)), 1.0)


@pytest.mark.parametrize("layout", ["nchw", "nhw", "flat"])
def test_random_shift_moves_whole_images_and_fills_with_zero(xp, layout):
    images = numbered(xp, c=1 if layout == "nhw" else 2)
    n, c, h, w = images.shape
    X = {"nchw": images, "nhw": images[:, 0], "flat": images.reshape(n, -1)}[layout]
    image_shape = (c, h, w) if layout == "flat" else None
    out = A.random_shift(X, 2, rng=np.random.default_rng(0), image_shape=image_shape)
    assert out.shape == X.shape and out.dtype == X.dtype
    got = to_numpy(out).reshape(n, c, h, w)
    source = to_numpy(images)
    shifts = set()
    for i in range(n):
        # exactly one shift by at most 2 pixels reproduces image i
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                   if np.array_equal(got[i], shifted(source[i], dy, dx))]
        assert len(matches) == 1, f"image {i} is not a shift of the input by at most 2 pixels"
        shifts.add(matches[0])
    assert len(shifts) > 1  # different images, different shifts


def shifted(image, dy, dx):
    """image (C, H, W) moved dy rows down and dx columns right, zero-filled."""
    out = np.zeros_like(image)
    h, w = image.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        image[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_random_crop_windows_and_padding(xp):
    images = numbered(xp, n=8)
    crops = to_numpy(A.random_crop(images, (3, 4), rng=0))
    assert crops.shape == (8, 2, 3, 4)
    source = to_numpy(images)
    for i in range(8):
        windows = [(r, c) for r in range(5 - 3 + 1) for c in range(7 - 4 + 1)
                   if np.array_equal(crops[i], source[i, :, r:r + 3, c:c + 4])]
        assert len(windows) == 1
    padded = to_numpy(A.random_crop(images, 9, padding=2, fill=-1.0, rng=0))
    assert padded.shape == (8, 2, 9, 9)
    assert np.all((padded == -1.0).sum(axis=(1, 2, 3)) == 2 * (81 - 35))  # the whole image is inside
    with pytest.raises(ValueError, match="does not fit"):
        A.random_crop(images, (6, 4))


def test_horizontal_flip(xp):
    images = numbered(xp, n=400, c=1, h=2, w=3)
    out = to_numpy(A.horizontal_flip(images, p=0.5, rng=5))
    source = to_numpy(images)
    flipped = np.array([np.array_equal(o, s[..., ::-1]) for o, s in zip(out, source)])
    kept = np.array([np.array_equal(o, s) for o, s in zip(out, source)])
    assert np.all(flipped ^ kept)  # each image either mirrored exactly or untouched
    assert 0.4 < flipped.mean() < 0.6
    np.testing.assert_array_equal(to_numpy(A.horizontal_flip(images, p=1.0, rng=0)), source[..., ::-1])
    np.testing.assert_array_equal(to_numpy(A.horizontal_flip(images, p=0.0, rng=0)), source)
    np.testing.assert_array_equal(to_numpy(A.horizontal_flip(images, rng=5)), out)


def test_crops_and_flips_are_the_same_on_every_device(xp):
    images = numbered(xp)
    np.testing.assert_array_equal(to_numpy(A.random_shift(images, 1, rng=3)),
                                  to_numpy(A.random_shift(to_numpy(images), 1, rng=3)))


def test_pipeline_composes_and_is_reproducible(xp):
    X = numbered(xp, n=10, c=1, h=4, w=4).reshape(10, 16)
    make = lambda: A.Augment(A.RandomShift(1), A.HorizontalFlip(), A.GaussianNoise(0.01),  # noqa: E731
                             image_shape=(4, 4), seed=0)
    first, second = make(), make()
    a1, a2 = first(X), first(X)
    assert a1.shape == X.shape
    assert not np.array_equal(to_numpy(a1), to_numpy(a2))  # fresh draws on each call
    np.testing.assert_array_equal(to_numpy(second(X)), to_numpy(a1))
    np.testing.assert_array_equal(to_numpy(second(X)), to_numpy(a2))
    with_rng = A.Augment(A.HorizontalFlip(1.0), image_shape=(1, 4, 4))(X, np.random.default_rng(0))
    np.testing.assert_array_equal(to_numpy(with_rng).reshape(10, 4, 4), to_numpy(X).reshape(10, 4, 4)[..., ::-1])
    cropped = A.Augment(A.RandomCrop(2), image_shape=(4, 4), seed=0)(X)
    assert cropped.shape == (10, 4)
    custom = A.Augment(lambda batch, rng: batch * 2)(X)  # any callable step
    np.testing.assert_array_equal(to_numpy(custom), to_numpy(X) * 2)
    assert "RandomShift" in repr(make())


def test_errors():
    with pytest.raises(ValueError, match="image_shape"):
        A.random_shift(np.zeros((2, 10)), 1, image_shape=(3, 3))
    with pytest.raises(ValueError, match="expected images"):
        A.horizontal_flip(np.zeros((2, 10)))
    with pytest.raises(TypeError, match="float32 or float64"):
        A.gaussian_noise(np.zeros(3, dtype=np.int32), 0.1)
    with pytest.raises(ValueError, match="std"):
        A.GaussianNoise(-1)
    with pytest.raises(ValueError, match="p must be <= 1"):
        A.HorizontalFlip(2)
    with pytest.raises(TypeError, match="callables"):
        A.Augment("flip")
