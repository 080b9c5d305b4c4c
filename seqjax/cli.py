"""The ``seqjax`` console command: ``seqjax bench ...``, ``seqjax gradnorm ...``,
``seqjax launch ...`` and ``seqjax --version``.

Every subcommand's options are validated by its parser (``seqjax._cli``): a bad value
ends with exit status 2 and one line naming the option and its rule, never with a
traceback. ``bench`` and ``gradnorm`` draw figures and progress bars, which need the
``plots`` extra (matplotlib, tqdm); without it they stop in one line that says so.
``launch`` (:mod:`seqjax.launch`) needs only the core.
"""

from __future__ import annotations

import importlib
import platform
import sys

COMMANDS = {
    "bench": ("seqjax.bench", "benchmark cells against Flax, Equinox, Haiku and PyTorch; "
              "bench recall, bench lm: whole models"),
    "gradnorm": ("seqjax.gradnorm", "gradient-norm experiments across sequence lengths"),
    "launch": ("seqjax.launch", "run a command as N JAX processes on this machine's CPU"),
}


# what the subcommands import beyond the core (figures, progress bars)
NEEDS = ("matplotlib", "tqdm")
# the subcommands that need nothing beyond the core
LEAN = ("launch",)


def _usage() -> str:
    lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return ("usage: seqjax COMMAND [options]   (seqjax COMMAND --help for its options)\n"
            "       seqjax --version\n\n"
            "commands:\n" + "\n".join(lines))


def version() -> str:
    """``seqjax X.Y.Z`` with the versions a bug report needs (jax, jaxlib, Python)."""
    import jax
    import jaxlib

    import seqjax

    return (f"seqjax {seqjax.__version__} (jax {jax.__version__}, jaxlib "
            f"{jaxlib.__version__}, Python {platform.python_version()})")


def main(argv=None) -> int:
    """Dispatches to a subcommand; returns the exit code (2 for a usage error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv and argv[0] in ("-V", "--version"):
        print(version())
        return 0
    if not argv:  # like git: the usage, and a usage-error status
        print(_usage())
        return 2
    if argv[0] not in COMMANDS:
        print(f"seqjax: error: unknown command {argv[0]!r}; choose from "
              f"{', '.join(COMMANDS)} (see seqjax --help)", file=sys.stderr)
        return 2
    from seqjax import _extras

    absent = [] if argv[0] in LEAN else _extras.missing(*NEEDS)
    if absent and not {"-h", "--help"} & set(argv[1:]):
        print(f"seqjax {argv[0]}: needs {' and '.join(absent)}, which "
              f"{'is' if len(absent) == 1 else 'are'} not installed: "
              f"{_extras.install_hint(absent[0])}", file=sys.stderr)
        return 1
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
