"""Same as `llmkit train`: see `python scripts/train.py --help`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
