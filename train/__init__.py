"""Training and validation CLIs (`hiervit-train`, `hiervit-validate`) built on timm's data, optim and scheduler parts.

`python -m hiervit.train` trains (`train.py`), `python -m hiervit.train.validate` validates (`validate.py`) and
`python -m hiervit.train.demo` runs the Fashion-MNIST demo (`demo.py`).
"""
