"""Same as `llmkit generate`: see `python scripts/generate.py --help`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
