"""How a launch's function, arguments and results cross between the notebook and its ranks."""
from __future__ import annotations

import collections
import os
import pickle
import types

__all__ = ["pickler", "dump_payload", "load_payload", "write_result", "load_result"]


def pickler():
    """cloudpickle when installed (ships notebook-defined functions by value), else pickle.

    Plain pickle still works for functions a child can import (module-level functions of an
    importable module): the GPU check machine has torch alone.
    """
    try:
        import cloudpickle
    except ImportError:
        return pickle
    return cloudpickle


def dump_payload(obj, file):
    """Pickle what the ranks run; with cloudpickle, keep each code object's file name.

    cloudpickle 3 replaces it with "<dynamic-code>", and a rank's traceback or hang report could
    then not say which notebook cell (or file) a line belongs to.
    """
    module = pickler()
    reduce_code = getattr(getattr(module, "cloudpickle", None), "_code_reduce", None)
    if reduce_code is None:  # plain pickle, or another cloudpickle: its own behaviour
        return module.dump(obj, file)

    def keep_filename(code):
        rebuild, args = reduce_code(code)
        return rebuild, tuple(code.co_filename if a == "<dynamic-code>" else a for a in args)

    class Pickler(module.Pickler):
        dispatch_table = collections.ChainMap({types.CodeType: keep_filename},
                                              module.Pickler.dispatch_table)

    Pickler(file, protocol=module.DEFAULT_PROTOCOL).dump(obj)


def load_payload(file, device=None):
    """In a rank: unpickle what the parent sent; CUDA tensors land on ``device`` (this rank's GPU).

    A tensor pickles its storage with ``torch.save``, which records the GPU it was on -- cuda:0
    for a tensor made in the notebook -- and restores it there, whatever the current device: so
    without this every rank would put the tensors and modules it is handed on GPU 0.
    """
    if device is None:
        return pickle.load(file)
    restore = restore_on(device)

    def load_from_bytes(data):  # torch.storage._load_from_bytes, with the location remapped
        import io

        import torch

        return torch.load(io.BytesIO(data), weights_only=False, map_location=restore)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ("torch.storage", "_load_from_bytes"):
                return load_from_bytes
            return super().find_class(module, name)

    return Unpickler(file).load()


def restore_on(device):
    """torch.load's ``map_location`` (called once per storage, with its recorded location):
    storages saved on any GPU go to ``device``; CPU storages stay."""
    def restore(storage, location):
        return storage.to(device=device) if location.startswith("cuda") else storage
    return restore


def write_result(path, outcome):
    """In a rank: its outcome, ("ok", value) or ("error", type, message, traceback, time)."""
    import torch

    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        torch.save(outcome, f, pickle_module=pickler())
    os.replace(tmp, path)  # atomic: the parent never reads half a result


def load_result(path):
    import torch

    with open(path, "rb") as f:
        # Map tensors onto the CPU so a result never initialises CUDA in the notebook's kernel.
        return torch.load(f, map_location="cpu", weights_only=False)
