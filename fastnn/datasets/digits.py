"""The UCI handwritten digits, shipped inside the package (no download).

1,797 grey 8x8 images of the digits 0-9; each pixel counts the "on" pixels of a 4x4 block of a
32x32 bitmap, so it is an integer in 0..16. This is the test set ("optdigits.tes") of the UCI ML
*Optical Recognition of Handwritten Digits* data set by E. Alpaydin and C. Kaynak (1998),
https://doi.org/10.24432/C50P49, licensed CC BY 4.0 by the UCI Machine Learning Repository, in
the copy and sample order that scikit-learn ships as ``sklearn.datasets.load_digits``
(scikit-learn is BSD-3-Clause). See ``DATA_LICENSE.md`` next to this file.

How ``digits.npz`` was made (once, with scikit-learn 1.9.1 in a scratch virtual environment;
scikit-learn is not a dependency of fastnn)::

    d = sklearn.datasets.load_digits()
    X, y = d.data.astype(np.uint8), d.target.astype(np.uint8)   # exact: values are integers
    np.savez_compressed("digits.npz", X=X, y=y)

That is 45 KB. Packing two pixels per byte does not work (0..16 is 17 values, and 16 is 9% of
the pixels) and saves little once compressed.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

def load_digits(return_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 UCI handwritten digits, as in ``sklearn.datasets.load_digits``.

    Returns ``(X, y)``: ``X`` float32 of shape ``(1797, 64)`` (row-major 8x8 pixels) or, with
    ``return_images=True``, ``(1797, 8, 8)``, values in 0..16 (scale them, e.g. ``X / 16``,
    before training); ``y`` int64 of shape ``(1797,)`` with the digit 0..9. The samples come in
    scikit-learn's order, classes mixed; each call returns fresh arrays.
    """
    with resources.files(__package__).joinpath("digits.npz").open("rb") as f, np.load(f) as npz:
        X, y = npz["X"].astype(np.float32), npz["y"].astype(np.int64)
    return (X.reshape(-1, 8, 8) if return_images else X), y
