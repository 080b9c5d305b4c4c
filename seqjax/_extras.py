"""Optional dependencies: import one, or fail in one line that names the extra.

seqjax's core needs jax, numpy and optax only. Everything else is an extra of the
package (``pyproject.toml``): ``flax`` (:mod:`seqjax.flax`), ``torch``
(:mod:`seqjax.interop.torch`), ``plots`` (matplotlib and tqdm, for the figures and
progress bars of ``seqjax bench`` and ``seqjax gradnorm``), ``peers``, ``examples``,
``test`` and ``docs``.
"""

from __future__ import annotations

import importlib
import importlib.util

# top-level module -> the extra that installs it
EXTRA = {
    "flax": "flax",
    "torch": "torch",
    "matplotlib": "plots",
    "tqdm": "plots",
    "sklearn": "examples",
    "statsmodels": "examples",
    "equinox": "peers",
    "haiku": "peers",
    "memax": "peers",
}


def install_hint(module: str) -> str:
    """``pip install "seqjax[<extra>]"`` for the extra that provides ``module``."""
    top = module.split(".")[0]
    return f'pip install "seqjax[{EXTRA.get(top, top)}]"'


def missing(*modules: str) -> list:
    """The top-level modules among ``modules`` that are not installed."""
    tops = dict.fromkeys(m.split(".")[0] for m in modules)
    return [m for m in tops if importlib.util.find_spec(m) is None]


def require(module: str, what: str):
    """Imports ``module``; if its package is not installed, raises an ``ImportError``
    of one line naming ``what`` needs it and the extra that installs it.

    A missing submodule of the package (an old version without it) gets the same
    message, since installing the extra upgrades it; an error raised while importing
    a module of another package propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        top = module.split(".")[0]
        if (error.name or "").split(".")[0] != top:  # a module *it* imports is missing
            raise
        raise ModuleNotFoundError(f"{what} needs {top}, which is not installed: "
                                  f"{install_hint(top)}", name=top) from None
