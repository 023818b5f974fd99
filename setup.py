"""Package layout: the folders flow/, operators/ and schemas/ install as diffraflow.flow, .operators, .schemas.

Everything else about the project is in pyproject.toml; this file only maps folders to package names,
finding subpackages so that new ones are never forgotten.
"""

from setuptools import find_packages, setup

TOP = ("flow", "operators", "schemas")
packages = ["diffraflow"] + [f"diffraflow.{name}" for name in find_packages(include=[f"{t}*" for t in TOP])]
setup(packages=packages, package_dir={"diffraflow": "diffraflow", **{f"diffraflow.{t}": t for t in TOP}})
