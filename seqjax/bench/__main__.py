"""``python -m seqjax.bench``."""

import sys

from seqjax.bench import main

sys.exit(main())
