"""`python -m vmtl.training --config FILE ...` (the entry torchrun uses for DDP)."""

import argparse

from vmtl.training.cli import add_arguments
from vmtl.training.run import run

parser = argparse.ArgumentParser(prog="python -m vmtl.training")
add_arguments(parser)
raise SystemExit(run(parser.parse_args()))
