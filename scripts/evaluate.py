"""Same as `llmkit evaluate`: see `python scripts/evaluate.py --help`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
