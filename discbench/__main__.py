"""``python -m discbench``: the command line (what ``torchrun ... -m discbench run ...`` starts on every rank)."""

from discbench.cli import main

if __name__ == "__main__":
    main()
