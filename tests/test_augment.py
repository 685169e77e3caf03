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


# ---------------------------------------------------------------------------------------------
# Affine maps: rotation, scaling, shear.


def images(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_identity_and_quarter_turns_are_exact(xp, rng, dtype):
    X = xp.asarray(images(rng, (3, 2, 7, 7), dtype))
    assert to_numpy(A.affine(X)).tobytes() == to_numpy(X).tobytes()  # scale 1, angle 0, shear 0
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for angle, k in ((90, 1), (180, 2), (270, 3), (-90, -1)):
        np.testing.assert_allclose(to_numpy(A.affine(X, angle=angle)), np.rot90(to_numpy(X), k, axes=(2, 3)),
                                   atol=tol, err_msg=f"angle={angle}")
    assert A.affine(X, angle=90).dtype == dtype and A.affine(X, angle=90).shape == X.shape


def scipy_affine(image, angle, scale, shear, fill):
    """The same map by scipy.ndimage.affine_transform (an independent implementation): it takes
    the matrix from output (row, col) to input (row, col) coordinates and an offset."""
    ndimage = pytest.importorskip("scipy.ndimage")
    a, s = np.deg2rad(angle), np.deg2rad(shear)
    rotate = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    forward_xy = scale * rotate @ np.array([[1, np.tan(s)], [0, 1]])
    swap = np.array([[0, 1], [1, 0]])  # (x, y) <-> (row, col)
    matrix = swap @ np.linalg.inv(forward_xy) @ swap
    centre = (np.array(image.shape) - 1) / 2
    return ndimage.affine_transform(image, matrix, offset=centre - matrix @ centre, order=1, mode="grid-constant",
                                    cval=fill)


@pytest.mark.parametrize("shape", [(9, 9), (8, 13)])
def test_affine_matches_scipy_ndimage(rng, shape):
    X = images(rng, (4, *shape))
    angle, scale, shear = rng.uniform(-40, 40, 4), rng.uniform(0.7, 1.4, 4), rng.uniform(-20, 20, 4)
    got = A.affine(X, angle=angle, scale=scale, shear=shear, fill=0.5)
    for i in range(4):
        expected = scipy_affine(X[i], angle[i], scale[i], shear[i], 0.5)
        np.testing.assert_allclose(got[i], expected, rtol=1e-10, atol=1e-10)


def test_affine_scaling_and_shear_move_points_where_the_formula_says(rng):
    X = np.zeros((1, 9, 9))
    X[0, 4, 6] = 1.0  # two columns right of the centre (4, 4)
    np.testing.assert_allclose(A.affine(X, scale=1.5)[0, 4, 7], 1.0)  # x: 2 -> 3
    Y = np.zeros((1, 9, 9))
    Y[0, 2, 4] = 1.0  # two rows above the centre: y = -2
    np.testing.assert_allclose(A.affine(Y, shear=45)[0, 2, 2], 1.0, atol=1e-12)  # x: 0 + tan(45) * -2
    flat = images(rng, (3, 2 * 5 * 6))
    out = A.affine(flat, angle=30, image_shape=(2, 5, 6))
    assert out.shape == flat.shape
    np.testing.assert_allclose(out, A.affine(flat.reshape(3, 2, 5, 6), angle=30).reshape(3, -1))


def test_random_affine_is_seeded_and_draws_within_its_ranges(xp, rng):
    X = xp.asarray(images(rng, (6, 1, 8, 8)))
    a = A.random_affine(X, degrees=30, scale=(0.8, 1.2), shear=10, rng=5)
    b = A.random_affine(X, degrees=30, scale=(0.8, 1.2), shear=10, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    on_host = A.random_affine(to_numpy(X), degrees=30, scale=(0.8, 1.2), shear=10, rng=5)
    np.testing.assert_allclose(to_numpy(a), on_host, atol=1e-12)  # the same parameters on every device
    draw = np.random.default_rng(5)
    angle, scale, shear = draw.uniform(-30, 30, 6), draw.uniform(0.8, 1.2, 6), draw.uniform(-10, 10, 6)
    np.testing.assert_allclose(to_numpy(a), to_numpy(A.affine(X, angle=angle, scale=scale, shear=shear)), atol=1e-12)
    assert not np.allclose(to_numpy(a), to_numpy(A.random_affine(X, degrees=30, rng=6)))
    np.testing.assert_array_equal(to_numpy(A.random_affine(X, rng=1)), to_numpy(X))  # nothing asked: identity
    step = A.Augment(A.RandomAffine(degrees=(-20, 20), scale=(0.9, 1.1), shear=5), A.HorizontalFlip(), seed=3)
    again = A.Augment(A.RandomAffine(degrees=(-20, 20), scale=(0.9, 1.1), shear=5), A.HorizontalFlip(), seed=3)
    np.testing.assert_array_equal(to_numpy(step(X)), to_numpy(again(X)))
    assert "RandomAffine(degrees=(-20.0, 20.0)" in repr(step)


def test_affine_errors(rng):
    X = images(rng, (2, 5, 5))
    with pytest.raises(ValueError, match="scale must be > 0"):
        A.affine(X, scale=0)
    with pytest.raises(ValueError, match=r"angle must be a finite number or one per image \(2,\)"):
        A.affine(X, angle=np.zeros(3))
    with pytest.raises(ValueError, match="shear must stay away from"):
        A.affine(X, shear=90)
    with pytest.raises(ValueError, match="scale must stay above 0"):
        A.random_affine(X, scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"degrees must be a number or a pair \(low, high\)"):
        A.random_affine(X, degrees=(10, -10))
    with pytest.raises(ValueError, match="degrees must be >= 0"):
        A.RandomAffine(degrees=-5)
    with pytest.raises(TypeError, match="float32 or float64"):
        A.affine(X.astype(np.int64))
