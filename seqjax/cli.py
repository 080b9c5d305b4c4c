"""The ``seqjax`` console command: ``seqjax bench ...`` and ``seqjax gradnorm ...``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "bench": ("seqjax.bench", "benchmark cells against Flax, Equinox, Haiku and PyTorch"),
    "gradnorm": ("seqjax.gradnorm", "gradient-norm experiments across sequence lengths"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: seqjax COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
