"""Package discovery for the `hiervit` namespace.

The repository keeps `backbones/`, `kernels/`, `train/` and `configs/` at the top level, but they install only as
`hiervit.backbones`, `hiervit.kernels`, ... (never as top-level packages). `package-dir` in pyproject.toml maps the
roots; this file lists every sub-package under its mapped name so new sub-folders need no edit here.
"""
import os

from setuptools import setup

ROOTS = {'hiervit': 'hiervit', 'hiervit.backbones': 'backbones', 'hiervit.kernels': 'kernels',
         'hiervit.train': 'train', 'hiervit.configs': 'configs'}


def _packages() -> list:
    here = os.path.dirname(os.path.abspath(__file__))
    packages = []
    for name, folder in ROOTS.items():
        for dirpath, dirnames, _ in os.walk(os.path.join(here, folder)):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(('.', '__')))
            rel = os.path.relpath(dirpath, os.path.join(here, folder))
            packages.append(name if rel == '.' else name + '.' + rel.replace(os.sep, '.'))
    return packages


setup(packages=_packages())
