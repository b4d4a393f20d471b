"""Upward delegation, written once: how a lower object's method reaches code
that lives above it without importing it.

Imports inside ``pynn`` go one way (checks → kernels → ops → layers → models
→ optim → io → training → integrations). A few methods belong to the user's
view of a lower object but are implemented higher up: ``model.save`` is file
format code, ``model.fit`` is the training loop. Each such method calls
exactly one hook here; the module that implements it installs the hook when
it is imported, and ``pynn/__init__.py`` imports every such module, so for a
user of ``import pynn`` the hooks are always there.

The hooks, each with the module that installs it and the method it serves:

- ``save_model`` (``pynn.io``): ``Sequential.save(path)``
- ``load_weights`` (``pynn.io``): ``Sequential.load_weights(path, strict)``
- ``reduce_model`` (``pynn.io``): ``Sequential.__reduce__()``, pickling as
  the bytes ``save`` writes
- ``reduce_optimizer`` (``pynn.io``): ``Optimizer.__reduce__()``, pickling as
  the model plus the optimizer's state in the same file format
- ``fit`` (``pynn.training``): ``Sequential.fit(...)``
- ``evaluate`` (``pynn.training``): ``Sequential.evaluate(...)``
- ``data_parallel`` (``pynn.distributed``): the ``DataParallel`` class that
  ``fit(..., comm=...)`` trains through; its ``guard(comm, where)`` wraps the
  whole run so that a failing rank aborts the job

A hook that was never installed raises ``RuntimeError`` naming the method and
the module to import, never an ``AttributeError`` from deep inside."""

_PROVIDERS = {
    "save_model": "pynn.io",
    "load_weights": "pynn.io",
    "reduce_model": "pynn.io",
    "reduce_optimizer": "pynn.io",
    "fit": "pynn.training",
    "evaluate": "pynn.training",
    "data_parallel": "pynn.distributed",
}

_installed = {}


def install(name, implementation):
    """Called once by the providing module at its import."""
    if name not in _PROVIDERS:
        raise ValueError(f"pynn._hooks.install: unknown hook {name!r}, expected one of "
                         f"{sorted(_PROVIDERS)}")
    _installed[name] = implementation


def get(name, where):
    """The implementation of hook ``name``, for the method ``where``."""
    implementation = _installed.get(name)
    if implementation is None:
        raise RuntimeError(f"{where} is implemented in {_PROVIDERS[name]}, which has not been "
                           f"imported; `import pynn` (or `import {_PROVIDERS[name]}`) installs it")
    return implementation
