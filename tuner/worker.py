"""Entry point of one spawned tuning worker: ``python -m tuner.worker STUDY.yaml OPTIONS_JSON INDEX``.

``servetune tune --n-jobs K`` starts K of these on the same storage; each runs the same study.
"""

from __future__ import annotations

import sys

from tuner.study import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
