"""`python -m lib_vaeprec bench [options]`: see lib_vaeprec/bench/cli.py."""
import sys

from .bench.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
