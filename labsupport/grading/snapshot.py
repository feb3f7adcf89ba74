"""Tamper evidence: the identity of everything the checks depend on, and how to put it back.

``Snapshot()`` walks the loaded ``labsupport`` modules (importing all of them first), the modules
they use and a few more (``builtins``, ``sys``, ``math``, ``torch``, ``torch.distributed``,
``torch.testing``, ``torch.nn.functional`` ...) and records every function, class and module
attribute (and, for ``labsupport``, constants such as tolerances), the methods of ``labsupport``'s
classes and of ``torch.Tensor``/``nn.Module``/``autograd.Function``, and each Python function's
``__code__``, defaults and keyword defaults. ``changes()`` lists what differs, each with an undo.
No list of names is kept by hand: what exists when the grader starts is what is guarded.
"""
from __future__ import annotations

import builtins
import gc
import importlib
import pkgutil
import sys
import types
import warnings

_SKIP_MODULES = ("labsupport.cli", "labsupport.course", "labsupport._worker")
# The grader's modules that run in the kernel guard themselves too (the rest of
# labsupport.grading is the instructor's side: nbformat, nbclient).
_GRADER_IN_KERNEL = ("labsupport.grading", "labsupport.grading.integrity",
                     "labsupport.grading.snapshot", "labsupport.grading.references",
                     "labsupport.grading.isolation")
_EXTRA_MODULES = ("builtins", "sys", "os", "math", "operator", "functools", "importlib", "torch",
                  "torch.testing", "torch.distributed", "torch.distributed.distributed_c10d",
                  "torch.nn.functional", "torch.autograd", "torch.nn.modules.module")
_EXTRA_CLASSES = ("torch.Tensor", "torch.nn.Module", "torch.autograd.Function")
_SCALARS = (int, float, complex, str, bytes, bool, tuple, frozenset)
# Replaced by IPython/ipykernel on every execution, or output streams: not the checks' business.
_VOLATILE = {"builtins": {"input", "raw_input", "exit", "quit", "get_ipython", "display", "help",
                          "copyright", "credits", "license", "breakpoint"},
             "sys": {"excepthook", "displayhook", "breakpointhook", "stdout", "stderr", "stdin",
                     "ps1", "ps2", "last_type", "last_value", "last_traceback", "last_exc"}}
_MISSING = object()


def _labsupport_modules():
    import labsupport

    names = [m.name for m in pkgutil.walk_packages(labsupport.__path__, "labsupport.")
             if not m.name.endswith("__main__")]
    for name in names:
        if not name.startswith(_SKIP_MODULES) and not (name.startswith("labsupport.grading")
                                                       and name not in _GRADER_IN_KERNEL):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - an optional dependency missing: nothing to guard
                pass
    return [m for n, m in list(sys.modules.items())
            if (n == "labsupport" or n.startswith("labsupport.")) and m is not None
            and not n.startswith(_SKIP_MODULES)]


class Snapshot:
    """Identity of everything the checks depend on, with what to put back."""

    def __init__(self, preimport=()):
        with warnings.catch_warnings():  # reading deprecated module attributes warns
            warnings.simplefilter("ignore")
            enabled = gc.isenabled()
            gc.disable()  # thousands of small tuples would trigger a full collection (0.2 s)
            try:
                self._take(preimport)
            finally:
                if enabled:
                    gc.enable()

    def _take(self, preimport):
        for name in preimport:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the lab's own cell will report it
                pass
        self.entries, self.funcs, self.keys, seen = [], [], [], set()
        # A lab that never imports labsupport (a made-up one) has no labsupport checks to guard.
        uses = any(n == "labsupport" or n.startswith("labsupport.") for n in preimport)
        ours = _labsupport_modules() if uses else []
        others = [sys.modules[n] for n in _EXTRA_MODULES if n in sys.modules]
        for mod in ours:
            others += [v for v in vars(mod).values() if isinstance(v, types.ModuleType)]
        classes = [c for c in (resolve(p) for p in _EXTRA_CLASSES if p.split(".")[0] in sys.modules)
                   if c is not None]
        for mod in ours + others:
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            mine, volatile = mod in ours, _VOLATILE.get(mod.__name__, ())
            d = vars(mod)
            for name, value in list(d.items()):
                if name.startswith("__") or name in volatile or not (callable(value) or isinstance(value, types.ModuleType)
                                                 or (mine and isinstance(value, _SCALARS))):
                    continue
                self.entries.append((mod, d, name, value, f"{mod.__name__}.{name}"))
                if mine and isinstance(value, type) and value.__module__.startswith("labsupport"):
                    classes.append(value)
            if mine:  # a new global named like a builtin shadows it for the whole module
                self.keys.append((mod, d, set(d), f"{mod.__name__}", True))
        for cls in classes:
            if id(cls) in seen:
                continue
            seen.add(id(cls))
            d = cls.__dict__
            for name, value in list(d.items()):
                if not name.startswith("__") or name in ("__init__", "__call__", "__eq__", "__new__"):
                    self.entries.append((cls, d, name, value, f"{cls.__module__}.{cls.__qualname__}.{name}"))
            self.keys.append((cls, d, set(d), f"{cls.__module__}.{cls.__qualname__}", False))
        self._functions()

    def _functions(self):
        seen = set()
        for _, _, _, value, label in self.entries:
            for fn in _inner_functions(value):
                if id(fn) not in seen:
                    seen.add(id(fn))
                    kw = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
                    self.funcs.append((fn, fn.__code__, fn.__defaults__, kw, label))

    def changes(self):
        """[(sentence, undo)] for everything that differs from the recorded state."""
        out = []
        for i, (owner, d, name, value, label) in enumerate(self.entries):
            now = d.get(name, _MISSING)
            if now is value:
                continue
            if _library_wrapper(now, value):  # e.g. torch._dynamo wraps torch.manual_seed on import
                self.entries[i] = (owner, d, name, now, label)
                continue
            out.append((f"{label} was replaced", lambda o=owner, n=name, v=value: setattr(o, n, v)))
        for fn, code, defaults, kw, label in self.funcs:
            now_kw = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
            if fn.__code__ is not code:
                out.append((f"the code of {label} (__code__) was replaced",
                            lambda fn=fn, c=code: setattr(fn, "__code__", c)))
            if fn.__defaults__ is not defaults or not _same_dict(now_kw, kw):
                out.append((f"the default arguments of {label} were changed",
                            lambda fn=fn, d=defaults, k=kw: (setattr(fn, "__defaults__", d),
                                                              setattr(fn, "__kwdefaults__", k))))
        for owner, d, keys, label, module in self.keys:
            if len(d) == len(keys):
                continue
            added = [k for k in list(d) if k not in keys and _shadows(owner, k, module)]
            for k in added:
                out.append((f"{label}.{k} was added, shadowing the original",
                            lambda o=owner, k=k: delattr(o, k)))
        return out


def _shadows(owner, name, module):
    """Does a new attribute hide one the checks use: a builtin (for a module's globals), or a
    base class's attribute (for a class)? Other new names are caches (``__slotnames__`` after
    pickling, a lazily imported name) or harmless."""
    if module:
        return name in vars(builtins)
    return (not name.startswith("__") or any(name in vars(base) for base in owner.__mro__[1:])) and \
        any(hasattr(base, name) for base in owner.__mro__[1:])


def _library_wrapper(new, old):
    """Is ``new`` a library's own wrapper of ``old`` (functools.wraps, code in site-packages)?"""
    code = getattr(getattr(new, "__code__", None), "co_filename", "") or getattr(
        getattr(getattr(new, "__call__", None), "__code__", None), "co_filename", "")
    return (getattr(new, "__wrapped__", None) is old and code.startswith(_LIBRARY_ROOTS)
            and "labsupport" not in code)


_LIBRARY_ROOTS = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})


def _inner_functions(value):
    if isinstance(value, types.FunctionType):
        yield value
    elif isinstance(value, (staticmethod, classmethod)) and isinstance(value.__func__, types.FunctionType):
        yield value.__func__
    elif isinstance(value, property):
        yield from (f for f in (value.fget, value.fset, value.fdel) if isinstance(f, types.FunctionType))


def _same_dict(a, b):
    return (a is None and b is None) or (a is not None and b is not None and a.keys() == b.keys()
                                         and all(a[k] is b[k] for k in a))


def resolve(dotted):
    """The object at a dotted path ('pkg.module.Class.method'), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return None
        return obj
    return None
