"""Build hook only (metadata lives in pyproject.toml): every build from a checkout carries the shipped kernels."""
from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MANIFEST_NAME = "manifest.json"


class BuildWithShippedBundles(build_py):
    """Copy each bundle folder of the repository's cache/ (cache/<gpu>/manifest.json + records/) into the built
    package as avo_inductor/shipped/<gpu>/, where the store looks for shipped bundles. Without this, ``pip install .``
    or a wheel would install no kernels at all: only an editable checkout reads cache/ directly."""

    def run(self) -> None:
        super().run()
        source = Path(__file__).resolve().parent / "cache"
        target = Path(self.build_lib) / "avo_inductor" / "shipped"
        for bundle in sorted(source.iterdir()) if source.is_dir() else []:
            if (bundle / MANIFEST_NAME).is_file():
                shutil.copytree(bundle, target / bundle.name, dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildWithShippedBundles})
