"""`python -m hiervit.train ...` (and `torchrun -m hiervit.train ...`) runs `hiervit-train`."""
from .train import main

if __name__ == '__main__':
    main()
