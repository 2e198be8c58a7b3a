"""spark-submit entry point: `spark-submit jobs/train.py --config conf/digits.yaml [--set key=value ...]`.

A thin wrapper over `sparkdl train`: the active spark-submit session is used; exits non-zero with a one-line reason.
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
