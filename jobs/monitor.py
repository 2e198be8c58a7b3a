"""spark-submit entry point: `spark-submit jobs/monitor.py --config conf/fair_survey.yaml [--set key=value ...]`.

A thin wrapper over `sparkdl monitor`: the active spark-submit session is used; exits non-zero with a one-line reason.
"""
import sys

from sparkdl.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
