"""Checkpoints: a model, its optimizer and anything else worth keeping, in one ``.npz`` file.

::

    fnn.save("ckpt.npz", model=model, optimizer=opt, scaler=scaler, trainer=trainer, epoch=12)
    extras = fnn.load("ckpt.npz", model=model, optimizer=opt)
    scaler.load_state_dict(extras["scaler"]); trainer.load_state_dict(extras["trainer"])

The file is a NumPy ``.npz`` archive (no pickle anywhere: it is read with
``allow_pickle=False``) holding the arrays ``a0, a1, ...`` and a JSON manifest
(``__manifest__``, UTF-8 bytes) with the format name and version, the fastnn version, and for
every array its logical name (``model/0.weight``, ``optimizer/state/0/exp_avg``,
``extras/scaler/mean``), shape, dtype and CRC-32. The model and optimizer sections and the
extras are stored as trees: JSON values, with dicts (keys of any JSON scalar type), tuples,
arrays and NumPy scalars tagged so that they come back as they went in.

Writing is atomic: the archive goes to a temporary file in the target's directory, is flushed
to disk, and replaces the target with ``os.replace``; if anything fails the temporary file is
removed and an existing checkpoint at ``path`` is untouched. Loading reads and checks the whole
file (archive, manifest, format version, every array's shape, dtype and checksum, then the
model's keys, shapes and dtypes and the optimizer's type) before it changes anything; on any
error it raises :class:`CheckpointError` (a ``ValueError``) saying what is wrong, and the model
and optimizer are exactly as they were. (torch.save / torch.load of state dicts, without pickle)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import zipfile
import zlib
from typing import Any

import numpy as np

from . import _backend as B
from ._version import __version__

__all__ = ["save", "load", "CheckpointError", "FORMAT", "VERSION", "MAX_DEPTH"]

FORMAT = "fastnn-checkpoint"
VERSION = 1
MAX_DEPTH = 64  # nesting of saved trees; real state dicts nest a few levels
_MANIFEST = "__manifest__"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model / optimizer it is loaded into."""


# ---------------------------------------------------------------------------------------------
# Trees: JSON values plus tagged dicts, tuples, arrays and NumPy scalars.


class _Encoder:
    """Turns values into JSON trees, collecting arrays (as host copies) with logical names."""

    def __init__(self):
        self.arrays: list[tuple[str, np.ndarray]] = []

    def array(self, name: str, value) -> int:
        host = np.asarray(B.to_numpy(value), order="C")  # keeps 0-d arrays 0-d
        if host.dtype.hasobject:
            raise TypeError(f"{name}: arrays of Python objects cannot be saved (no pickle)")
        self.arrays.append((name, host))
        return len(self.arrays) - 1

    def tree(self, value: Any, name: str, depth: int = 0):
        if depth > MAX_DEPTH:
            raise ValueError(f"{name}: nested deeper than {MAX_DEPTH} levels (a checkpoint refuses to load such "
                             "a tree, so it is not written either)")
        if isinstance(value, np.generic):  # before float: numpy.float64 is a float
            return {"scalar": self.array(name, np.asarray(value))}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.ndarray) or B.is_cupy(value):
            return {"array": self.array(name, value)}
        if isinstance(value, dict):
            items = []
            for key, item in value.items():
                if not (key is None or isinstance(key, (bool, int, float, str))):
                    raise TypeError(f"{name}: dict keys must be str, int, float, bool or None, got "
                                    f"{type(key).__name__}")
                items.append([key, self.tree(item, f"{name}/{key}", depth + 1)])
            return {"dict": items}
        if isinstance(value, (list, tuple)):
            items = [self.tree(item, f"{name}/{i}", depth + 1) for i, item in enumerate(value)]
            return {"tuple": items} if isinstance(value, tuple) else items
        if callable(getattr(value, "state_dict", None)):
            return self.tree(value.state_dict(), name, depth)
        raise TypeError(f"{name}: cannot save a {type(value).__name__} (checkpoints hold arrays, numbers, "
                        "strings, None, lists, tuples, dicts and objects with a state_dict() method)")


_SCALARS = (type(None), bool, int, float, str)


def _decode(node, arrays: list, where: str, depth: int = 0):
    """The value a tree stands for (arrays as NumPy arrays). A manifest is untrusted input:
    anything but the trees :class:`_Encoder` writes (an unknown tag, a tag whose body has the
    wrong type, an array index the file does not have, nesting deeper than :data:`MAX_DEPTH`)
    is a :class:`CheckpointError` naming ``where``."""
    if depth > MAX_DEPTH:
        raise CheckpointError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(node, _SCALARS):
        return node
    if isinstance(node, list):
        return [_decode(item, arrays, where, depth + 1) for item in node]
    if not isinstance(node, dict) or len(node) != 1:
        raise CheckpointError(f"{where}: malformed manifest entry {_brief(node)}")
    (tag, body), = node.items()
    if tag == "dict":
        if not isinstance(body, list) or not all(isinstance(pair, list) and len(pair) == 2 and
                                                 isinstance(pair[0], _SCALARS) for pair in body):
            raise CheckpointError(f"{where}: a dict entry must be a list of [key, value] pairs with scalar keys, "
                                  f"got {_brief(body)}")
        return {key: _decode(item, arrays, where, depth + 1) for key, item in body}
    if tag == "tuple":
        if not isinstance(body, list):
            raise CheckpointError(f"{where}: a tuple entry must be a list, got {_brief(body)}")
        return tuple(_decode(item, arrays, where, depth + 1) for item in body)
    if tag in ("array", "scalar"):
        if type(body) is not int or not 0 <= body < len(arrays):
            raise CheckpointError(f"{where}: the manifest refers to array {_brief(body)}, which the file does not "
                                  "have")
        if tag == "scalar" and arrays[body].ndim != 0:
            raise CheckpointError(f"{where}: scalar entry {body} refers to an array of shape {arrays[body].shape}")
        return arrays[body] if tag == "array" else arrays[body][()]
    raise CheckpointError(f"{where}: unknown manifest tag {_brief(tag)}")


def _brief(value, limit: int = 80) -> str:
    """``repr(value)``, cut short (hostile manifests can be large)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# save


def save(path, model=None, optimizer=None, **extras) -> str:
    """Write ``model.state_dict()`` (parameters and buffers), ``optimizer.state_dict()`` and the
    ``extras`` to one ``.npz`` file at ``path`` (the name is used as given), atomically.

    Extras may be numbers, strings, None, NumPy or CuPy arrays and scalars, lists, tuples and
    dicts of those (nested at most :data:`MAX_DEPTH` deep), and objects with a ``state_dict()``
    method (preprocessing transformers, ``History``, ``Trainer``, LR schedules, ``EMA``, other
    models), which are stored as their state dict. Arrays are saved from the host (GPU arrays
    are copied). Returns ``path``.
    """
    encoder = _Encoder()
    return _write(path, _manifest(encoder, model, optimizer, extras), encoder)


def _manifest(encoder: _Encoder, model, optimizer, extras: dict) -> dict:
    """The manifest of a checkpoint without its array list (:func:`_write` adds it); other
    files built on the format (``fastnn.model_file``) add their own sections."""
    manifest = {"format": FORMAT, "version": VERSION, "fastnn": __version__, "model": None, "optimizer": None}
    for name, given in (("model", model), ("optimizer", optimizer)):
        if given is not None and not callable(getattr(given, "state_dict", None)):
            raise TypeError(f"{name} must be a fastnn {'Module' if name == 'model' else 'optimizer'} (an object with "
                            f"a state_dict() method), got {type(given).__name__}")
    if model is not None:
        manifest["model"] = {"type": type(model).__name__, "state": encoder.tree(model.state_dict(), "model")}
    if optimizer is not None:
        manifest["optimizer"] = {"type": type(optimizer).__name__,
                                 "state": encoder.tree(optimizer.state_dict(), "optimizer")}
    manifest["extras"] = encoder.tree(extras, "extras")
    return manifest


def _write(path, manifest: dict, encoder: _Encoder) -> str:
    """Write ``manifest`` (plus the list of ``encoder``'s arrays) and the arrays to ``path``,
    atomically. Returns ``path`` as a string."""
    path = os.fspath(path)
    manifest["arrays"] = [{"name": name, "shape": list(a.shape), "dtype": a.dtype.str,
                           "crc32": zlib.crc32(a.data)} for name, a in encoder.arrays]
    members = {f"a{i}": a for i, (_, a) in enumerate(encoder.arrays)}
    members[_MANIFEST] = np.frombuffer(json.dumps(manifest).encode("utf-8"), dtype=np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = _temporary_file(directory, os.path.basename(path))
    try:
        with os.fdopen(handle, "wb") as f:
            np.savez(f, **members)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise
    _sync_directory(directory)
    return path


def _temporary_file(directory: str, name: str) -> tuple[int, str]:
    """A new file beside the target, open for writing: (descriptor, path). Created with mode
    0o666 less the umask, as ``open`` would, so the checkpoint gets the usual permissions
    (``tempfile.mkstemp`` would make it private to the owner)."""
    while True:
        temporary = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue


def _sync_directory(directory: str) -> None:
    """Make the rename itself durable where the platform allows it (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# load


# RecursionError: json.loads of a manifest nested deeper than Python's recursion limit;
# MemoryError: an array header claiming more elements than memory holds; NotImplementedError:
# zipfile's answer to a damaged entry header that names a zip version or compression it lacks.
_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, TypeError, UnicodeDecodeError,
                RecursionError, MemoryError, NotImplementedError)


def _unreadable(path: str, what: str, exc: Exception) -> Exception:
    """The error to raise for ``exc`` while reading ``what`` (a missing file stays FileNotFoundError)."""
    if isinstance(exc, FileNotFoundError):
        return exc
    return CheckpointError(f"{path}: {what} cannot be read (truncated or corrupt file?): {type(exc).__name__}: {exc}")


def _read(path: str) -> tuple[dict, list]:
    """The manifest and the arrays, every array checked against it."""
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a folder, not a checkpoint or model file (fastnn train writes "
                              f"{os.path.join(path, 'model.npz')} and checkpoint.npz there)")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise _unreadable(path, "the file", exc) from None
    if not head.startswith(b"PK") and head != b"\x93NUMPY":  # neither a zip (.npz) nor a .npy
        raise CheckpointError(f"{path} is not a fastnn checkpoint or model file: those are .npz (zip) archives, and "
                              f"this file starts with {head!r}")
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, "the archive", exc) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CheckpointError(f"{path} is a single .npy array, not a fastnn checkpoint")
    with npz:
        names = set(npz.files)
        if _MANIFEST not in names:
            raise CheckpointError(f"{path} is not a fastnn checkpoint (no {_MANIFEST} entry)")
        try:
            manifest = json.loads(npz[_MANIFEST].tobytes().decode("utf-8"))
        except _READ_ERRORS as exc:
            raise _unreadable(path, "the manifest", exc) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a fastnn checkpoint (its manifest names no format {FORMAT!r})")
        if type(manifest.get("version")) is not int or manifest["version"] != VERSION:
            raise CheckpointError(f"{path} has checkpoint format version {manifest.get('version')!r}; this fastnn "
                                  f"({__version__}) reads version {VERSION}")
        specs = manifest.get("arrays")
        if not isinstance(specs, list):
            raise CheckpointError(f"{path}: malformed manifest (no list of arrays)")
        expected = {f"a{i}" for i in range(len(specs))} | {_MANIFEST}
        if names != expected:
            raise CheckpointError(f"{path}: the archive's entries {sorted(names - expected)} are unexpected and "
                                  f"{sorted(expected - names)} are missing")
        arrays = []
        for i, spec in enumerate(specs):
            spec = _array_spec(spec, i, path)
            try:
                a = npz[f"a{i}"]
            except _READ_ERRORS as exc:
                raise _unreadable(path, f"array {spec['name']!r}", exc) from None
            if list(a.shape) != spec["shape"] or a.dtype.str != spec["dtype"]:
                raise CheckpointError(f"{path}: array {spec['name']!r} is {a.dtype.str} {list(a.shape)} but the "
                                      f"manifest says {spec['dtype']} {spec['shape']}")
            if zlib.crc32(np.asarray(a, order="C").data) != spec["crc32"]:
                raise CheckpointError(f"{path}: array {spec['name']!r} is corrupt (its CRC-32 does not match the "
                                      "manifest)")
            arrays.append(a)
    return manifest, arrays


def _array_spec(spec, i: int, path: str) -> dict:
    """Entry ``i`` of the manifest's array list, checked: a dict with a string ``name``, a
    ``shape`` of non-negative ints, a string ``dtype`` and an int ``crc32``."""
    fields = {"name": str, "shape": list, "dtype": str, "crc32": int}
    if not isinstance(spec, dict) or set(spec) != set(fields) or \
            any(type(spec[key]) is not kind for key, kind in fields.items()) or \
            any(type(n) is not int or n < 0 for n in spec["shape"]):
        raise CheckpointError(f"{path}: malformed manifest: array entry {i} must be a dict "
                              "{name: str, shape: [non-negative ints], dtype: str, crc32: int}, got "
                              f"{_brief(spec)}")
    return spec


def _section(manifest: dict, key: str, arrays: list, path: str) -> dict | None:
    """The manifest's ``model`` or ``optimizer`` section with its state decoded: None, or
    ``{"type": name, "state": dict}``."""
    section = manifest.get(key)
    if section is None:
        return None
    if not isinstance(section, dict) or not isinstance(section.get("type"), str) or "state" not in section:
        raise CheckpointError(f"{path}: malformed manifest: the {key} section must be a dict with a 'type' "
                              f"string and a 'state', got {_brief(section)}")
    state = _decode(section["state"], arrays, f"{path}: {key}")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: malformed manifest: the {key} state must be a dict, got "
                              f"{type(state).__name__}")
    return {**section, "state": state}


def load(path, model=None, optimizer=None) -> dict:
    """Read a checkpoint written by :func:`save`: load its model state into ``model`` and its
    optimizer state into ``optimizer`` (each only when given; in place, onto the device and
    into the arrays they already have), and return the extras as a dict (arrays as NumPy
    arrays, objects as the state dicts they were saved as).

    Everything is checked before anything changes; a truncated or corrupt file, another format
    version, a checkpoint without the requested section, an optimizer of another type, or
    model keys, shapes or dtypes that do not match raise :class:`CheckpointError` naming the
    problem, and leave the model and optimizer as they were.
    """
    path = os.fspath(path)
    manifest, arrays = _read(path)
    sections = {key: _section(manifest, key, arrays, path) for key in ("model", "optimizer")}
    extras = _decode(manifest.get("extras", {"dict": []}), arrays, f"{path}: extras")
    if not isinstance(extras, dict):
        raise CheckpointError(f"{path}: malformed manifest: the extras must be a dict, got {type(extras).__name__}")
    for key, given in (("model", model), ("optimizer", optimizer)):
        if given is not None and sections[key] is None:
            raise CheckpointError(f"{path} holds no {key} state (it was saved without {key}=); nothing was loaded")
    if model is not None:
        problems = model.state_dict_mismatches(sections["model"]["state"], source="the checkpoint")
        if problems:
            raise CheckpointError(f"{path}: the checkpoint's model does not match {type(model).__name__}; nothing was "
                                  "loaded:\n  " + "\n  ".join(problems))
    if optimizer is not None:
        saved = sections["optimizer"]["type"]
        if saved != type(optimizer).__name__:
            raise CheckpointError(f"{path} holds the state of a {saved} optimizer, not of a "
                                  f"{type(optimizer).__name__}; nothing was loaded")
        try:
            optimizer.load_state_dict(sections["optimizer"]["state"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{path}: the optimizer state does not fit {type(optimizer).__name__}; nothing was "
                                  f"loaded: {exc}") from None
    if model is not None:
        model.load_state_dict(sections["model"]["state"])
    return extras
