"""Data augmentation for array batches: Gaussian noise, and random crops, shifts, horizontal
flips and affine maps (rotation, scaling, shear) for images; seeded, on NumPy or CuPy arrays.

Image batches are (N, H, W) or (N, C, H, W); a flat batch (N, D) is read as images when
``image_shape=(H, W)`` or ``(C, H, W)`` is given, and comes back flat. Every function takes
``rng``: a ``numpy.random.Generator`` or a seed (int or None). Offsets, flip decisions and
affine parameters are drawn on the CPU, so crops, shifts, flips and affine maps are the same
on NumPy and CuPy for the same seed;
Gaussian noise is drawn on the array's device (a CuPy RandomState seeded from ``rng``), so it is
reproducible per device. Inputs are never modified; a new array comes back.

:class:`Augment` chains steps into one callable for a training loop or a trainer callback::

    augment = fnn.augment.Augment(fnn.augment.RandomShift(2), fnn.augment.HorizontalFlip(),
                                  fnn.augment.GaussianNoise(0.05), image_shape=(1, 28, 28), seed=0)
    Xb = augment(Xb)            # or augment(Xb, rng) with a generator of your own
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from .data import as_generator

__all__ = ["gaussian_noise", "random_crop", "random_shift", "horizontal_flip", "affine", "random_affine",
           "GaussianNoise", "RandomCrop", "RandomShift", "HorizontalFlip", "RandomAffine", "Augment"]


def _float_batch(X, name: str = "X"):
    X = B.as_array(X, name)
    if np.dtype(X.dtype) not in B.FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {np.dtype(X.dtype)}")
    return X


def _as_images(X, image_shape=None):
    """A (N, C, H, W) view of a batch and a function that gives a result its original layout."""
    X = _float_batch(X)
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
        if len(shape) not in (2, 3) or X.ndim != 2 or int(np.prod(shape)) != X.shape[1]:
            raise ValueError(f"image_shape={tuple(image_shape)} needs a flat batch (N, {int(np.prod(shape))}), "
                             f"got X of shape {tuple(X.shape)}")
        if len(shape) == 2:
            shape = (1, *shape)
        return X.reshape(X.shape[0], *shape), lambda images: images.reshape(images.shape[0], -1)
    if X.ndim == 4:
        return X, lambda images: images
    if X.ndim == 3:
        return X[:, None], lambda images: images[:, 0]
    raise ValueError(f"expected images (N, H, W) or (N, C, H, W), or a flat batch (N, D) with image_shape=, "
                     f"got shape {tuple(X.shape)}")


def _pair_of_ints(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in pair):
        raise ValueError(f"{name} must be a non-negative int or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def gaussian_noise(X, std: float, rng=None):
    """X + std * N(0, 1) elementwise, same shape and dtype as X (any shape).
    (torchvision.transforms.v2.GaussianNoise with mean 0)"""
    X = _float_batch(X)
    std = B.check_scalar(std, "std", low=0.0)
    rng = as_generator(rng)
    xp = B.array_module(X)
    if xp is np:
        noise = rng.standard_normal(X.shape, dtype=X.dtype)
    else:
        noise = xp.random.RandomState(int(rng.integers(2**32))).standard_normal(X.shape, dtype=X.dtype)
    return X + X.dtype.type(std) * noise


def random_crop(X, size, padding=0, rng=None, image_shape=None, fill: float = 0.0):
    """Random crops of each image: pad by ``padding`` pixels of value ``fill`` on every side, then
    cut out a ``size=(h, w)`` (or h) window at a position drawn uniformly for each image.

    X: images (N, H, W) / (N, C, H, W), or (N, D) with ``image_shape``. Returns (N, h, w) /
    (N, C, h, w) / (N, C*h*w). All channels of an image share its window.
    (torchvision.transforms.RandomCrop(size, padding, fill))
    """
    images, restore = _as_images(X, image_shape)
    pad_h, pad_w = _pair_of_ints(padding, "padding")
    h, w = _pair_of_ints(size, "size")
    n, c, height, width = images.shape
    free_h, free_w = height + 2 * pad_h - h, width + 2 * pad_w - w
    if h < 1 or w < 1 or free_h < 0 or free_w < 0:
        raise ValueError(f"crop size {(h, w)} does not fit images of {(height, width)} padded by {(pad_h, pad_w)}")
    rng = as_generator(rng)
    top = rng.integers(0, free_h + 1, size=n)
    left = rng.integers(0, free_w + 1, size=n)
    xp = B.array_module(images)
    padded = xp.pad(images, ((0, 0), (0, 0), (pad_h, pad_h), (pad_w, pad_w)), constant_values=fill)
    rows = xp.asarray(top[:, None] + np.arange(h))[:, None, :, None]
    cols = xp.asarray(left[:, None] + np.arange(w))[:, None, None, :]
    crops = padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None], rows, cols]
    return restore(crops)


def random_shift(X, max_shift, rng=None, image_shape=None, fill: float = 0.0):
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift] along
    each axis (``max_shift``: int or (rows, columns)), filling the uncovered border with ``fill``:
    a pad-and-crop that keeps the image size. Shapes as in :func:`random_crop`, unchanged.
    (torchvision.transforms.RandomAffine(translate=...) on the pixel grid)"""
    images, restore = _as_images(X, image_shape)
    size = images.shape[2:]
    return restore(random_crop(images, size, padding=max_shift, rng=rng, fill=fill))


def horizontal_flip(X, p: float = 0.5, rng=None, image_shape=None):
    """Mirror each image left-right (along W) with probability ``p``, independently per image.
    Shapes as in :func:`random_crop`, unchanged. (torchvision.transforms.RandomHorizontalFlip)"""
    images, restore = _as_images(X, image_shape)
    p = B.check_scalar(p, "p", low=0.0, high=1.0)
    flip = as_generator(rng).random(images.shape[0]) < p
    xp = B.array_module(images)
    flipped = xp.where(xp.asarray(flip)[:, None, None, None], images[..., ::-1], images)
    return restore(flipped)


def _per_image(value, n: int, name: str) -> np.ndarray:
    """A float64 (n,) host array from a scalar or n values."""
    values = np.asarray(B.to_numpy(value) if B.is_cupy(value) else value, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(n, float(values))
    if values.shape != (n,) or not np.isfinite(values).all():
        raise ValueError(f"{name} must be a finite number or one per image ({n},), got {value!r}")
    return values


def affine(X, angle=0.0, scale=1.0, shear=0.0, image_shape=None, fill: float = 0.0):
    """Each image mapped by a rotation, a scaling and a shear about its centre, with bilinear
    resampling.

    In pixel coordinates relative to the centre ((H - 1) / 2, (W - 1) / 2), x along the
    columns and y down the rows, a point (x, y) of the input goes to M (x, y) with
    M = scale * R(angle) * Sh(shear), R(a) = [[cos a, sin a], [-sin a, cos a]] (the content
    turns counterclockwise as displayed for a positive angle: ``angle=90`` is ``np.rot90`` on
    square images) and Sh(s) = [[1, tan s], [0, 1]] (each row slides sideways in proportion to
    its height above the centre). Each output pixel o reads the input at M^-1 o by bilinear
    interpolation between its four neighbours, a neighbour outside the image counting as
    ``fill`` (scipy.ndimage's mode "grid-constant"). ``angle`` and ``shear`` in degrees,
    ``scale`` > 0: numbers, or one value per image (N,). ``scale=1, angle=0, shear=0`` is the
    identity.

    X: images (N, H, W) / (N, C, H, W), or (N, D) with ``image_shape``; the result has X's
    shape, dtype and device (every channel of an image moves together).
    (torchvision.transforms.functional.affine without translation; scipy.ndimage.affine_transform
    with order=1)"""
    images, restore = _as_images(X, image_shape)
    n, c, height, width = images.shape
    angle = np.deg2rad(_per_image(angle, n, "angle"))
    shear = np.deg2rad(_per_image(shear, n, "shear"))
    scale = _per_image(scale, n, "scale")
    if (scale <= 0).any():
        raise ValueError(f"scale must be > 0, got {scale[scale <= 0][0]}")
    if (np.abs(np.cos(shear)) < 1e-6).any():
        raise ValueError("shear must stay away from +-90 degrees")
    fill = B.check_scalar(fill, "fill")
    # M^-1 = Sh(s)^-1 R(a)^-1 / scale, as (N, 2, 2) acting on (x, y).
    cos, sin, tan = np.cos(angle), np.sin(angle), np.tan(shear)
    inverse = np.stack([np.stack([cos - tan * sin, -sin - tan * cos], axis=1),
                        np.stack([sin, cos], axis=1)], axis=1) / scale[:, None, None]
    xp = B.array_module(images)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    ys, xs = np.meshgrid(np.arange(height) - cy, np.arange(width) - cx, indexing="ij")
    grid = xp.asarray(np.stack([xs.reshape(-1), ys.reshape(-1)]))  # (2, H*W): x, y
    source = xp.asarray(inverse) @ grid  # (N, 2, H*W)
    x, y = source[:, 0] + cx, source[:, 1] + cy
    x0, y0 = xp.floor(x), xp.floor(y)
    wx, wy = (x - x0).astype(images.dtype), (y - y0).astype(images.dtype)
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    flat = images.reshape(n, c, height * width)
    out = xp.zeros((n, c, height * width), images.dtype)
    for dy, dx, weight in ((0, 0, (1 - wy) * (1 - wx)), (0, 1, (1 - wy) * wx), (1, 0, wy * (1 - wx)),
                           (1, 1, wy * wx)):
        row, col = y0 + dy, x0 + dx
        inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
        index = xp.where(inside, row * width + col, 0)
        values = xp.take_along_axis(flat, xp.broadcast_to(index[:, None, :], flat.shape), axis=2)
        out += weight[:, None, :] * xp.where(inside[:, None, :], values, images.dtype.type(fill))
    return restore(out.reshape(n, c, height, width))


def _range(value, name: str, around: float = 0.0, low: float | None = None) -> tuple[float, float]:
    """(low, high) from a number d (around - d, around + d) or a pair."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        d = B.check_scalar(value, name, low=0.0)
        pair = (around - d, around + d)
    else:
        pair = tuple(B.check_scalar(v, name) for v in value)
        if len(pair) != 2 or pair[0] > pair[1]:
            raise ValueError(f"{name} must be a number or a pair (low, high) with low <= high, got {value!r}")
    if low is not None and pair[0] <= low:
        raise ValueError(f"{name} must stay above {low}, got the range {pair}")
    return pair


def random_affine(X, degrees=0.0, scale=(1.0, 1.0), shear=0.0, rng=None, image_shape=None, fill: float = 0.0):
    """:func:`affine` with parameters drawn for each image: the angle uniform in
    [-degrees, degrees] (or a range (low, high)), the scale uniform in ``scale`` = (low, high),
    the shear uniform in [-shear, shear] degrees (or a range). Shapes as in :func:`affine`.
    (torchvision.transforms.RandomAffine(degrees, scale=scale, shear=shear), no translation)"""
    images, restore = _as_images(X, image_shape)
    n = images.shape[0]
    angles, scales, shears = _range(degrees, "degrees"), _range(scale, "scale", low=0.0), _range(shear, "shear")
    rng = as_generator(rng)
    return restore(affine(images, angle=rng.uniform(*angles, size=n), scale=rng.uniform(*scales, size=n),
                          shear=rng.uniform(*shears, size=n), fill=fill))


class GaussianNoise:
    """Pipeline step: :func:`gaussian_noise` with ``std``."""

    def __init__(self, std: float):
        self.std = B.check_scalar(std, "std", low=0.0)

    def __call__(self, X, rng):
        return gaussian_noise(X, self.std, rng)

    def __repr__(self):
        return f"GaussianNoise(std={self.std})"


class RandomCrop:
    """Pipeline step: :func:`random_crop` to ``size`` after ``padding`` (on (N, C, H, W) images)."""

    def __init__(self, size, padding=0, fill: float = 0.0):
        self.size, self.padding = _pair_of_ints(size, "size"), _pair_of_ints(padding, "padding")
        self.fill = B.check_scalar(fill, "fill")

    def __call__(self, images, rng):
        return random_crop(images, self.size, self.padding, rng, fill=self.fill)

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding}, fill={self.fill})"


class RandomShift:
    """Pipeline step: :func:`random_shift` by up to ``max_shift`` pixels (on (N, C, H, W) images)."""

    def __init__(self, max_shift, fill: float = 0.0):
        self.max_shift = _pair_of_ints(max_shift, "max_shift")
        self.fill = B.check_scalar(fill, "fill")

    def __call__(self, images, rng):
        return random_shift(images, self.max_shift, rng, fill=self.fill)

    def __repr__(self):
        return f"RandomShift(max_shift={self.max_shift}, fill={self.fill})"


class HorizontalFlip:
    """Pipeline step: :func:`horizontal_flip` with probability ``p`` (on (N, C, H, W) images)."""

    def __init__(self, p: float = 0.5):
        self.p = B.check_scalar(p, "p", low=0.0, high=1.0)

    def __call__(self, images, rng):
        return horizontal_flip(images, self.p, rng)

    def __repr__(self):
        return f"HorizontalFlip(p={self.p})"


class RandomAffine:
    """Pipeline step: :func:`random_affine` with ``degrees``, ``scale`` and ``shear`` ranges (on
    (N, C, H, W) images)."""

    def __init__(self, degrees=0.0, scale=(1.0, 1.0), shear=0.0, fill: float = 0.0):
        self.degrees = _range(degrees, "degrees")
        self.scale = _range(scale, "scale", low=0.0)
        self.shear = _range(shear, "shear")
        self.fill = B.check_scalar(fill, "fill")

    def __call__(self, images, rng):
        return random_affine(images, self.degrees, self.scale, self.shear, rng, fill=self.fill)

    def __repr__(self):
        return f"RandomAffine(degrees={self.degrees}, scale={self.scale}, shear={self.shear}, fill={self.fill})"


class Augment:
    """A chain of augmentation steps applied in order: ``Augment(step, ...)(X, rng=None)``.

    A step is any callable ``step(X, rng) -> X`` (the classes above, or your own). The batch is
    handed to the steps as (N, C, H, W) images when it is image-shaped or ``image_shape`` is
    given (and returned in its own layout), else as it is. ``rng`` defaults to the pipeline's
    own generator made from ``seed``, so successive calls draw fresh augmentations in a
    reproducible sequence. (torchvision.transforms.Compose)
    """

    def __init__(self, *steps, image_shape=None, seed=None):
        for step in steps:
            if not callable(step):
                raise TypeError(f"Augment steps must be callables step(X, rng), got {type(step).__name__}")
        self.steps = steps
        self.image_shape = None if image_shape is None else tuple(int(s) for s in image_shape)
        self.rng = as_generator(seed)

    def __call__(self, X, rng=None):
        rng = self.rng if rng is None else as_generator(rng)
        X = _float_batch(X)
        if self.image_shape is None and X.ndim not in (3, 4):
            batch, restore = X, lambda out: out
        else:
            batch, restore = _as_images(X, self.image_shape)
        for step in self.steps:
            batch = step(batch, rng)
        return restore(batch)

    def __repr__(self):
        steps = ", ".join(repr(step) for step in self.steps)
        return f"Augment({steps}, image_shape={self.image_shape})"
