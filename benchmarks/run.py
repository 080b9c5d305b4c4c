"""Run the seqjax benchmark suite: ``python benchmarks/run.py [--grid quick|full|tiny] ...``.

A thin script over the public ``seqjax.bench.main`` (same options as ``seqjax bench``).
"""

import sys

from seqjax.bench import main

if __name__ == "__main__":
    sys.exit(main())
