"""Entry point: `python tune.py --tissue all --data DIR --config tune_configs/default.yaml`.

See README.md; the work is done in mtlrank_ray.cli.
"""

import sys

from mtlrank_ray.cli import tune_main

if __name__ == "__main__":
    sys.exit(tune_main())
