"""spark-submit entry point: `spark-submit jobs/explain.py --config conf/digits.yaml [--set key=value ...]`.

A thin wrapper over `sparkdl explain`: the active spark-submit session is used; exits non-zero with a one-line reason.
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["explain", *sys.argv[1:]]))
