"""spark-submit entry point: `spark-submit jobs/tune.py --config conf/breast_cancer_tune.yaml [--set key=value ...]`.

A thin wrapper over `sparkdl tune`: the active spark-submit session is used; exits non-zero with a one-line reason.
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
