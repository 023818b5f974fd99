"""Every docstring example of diffraflow runs, one test per docstring.

The examples are found and run with the standard library's :mod:`doctest`
on the modules imported by their one import name (``diffraflow.flow...``).
pytest's ``--doctest-modules`` would import the root folders ``flow/``,
``operators/`` and ``schemas/`` a second time under their bare names, and the
copies would re-register every operator class in the registry.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

PACKAGES = ("diffraflow.flow", "diffraflow.operators", "diffraflow.schemas")
#: pytest's default doctest flag: ``...`` matches anything.
FLAGS = doctest.ELLIPSIS


def module_names() -> list[str]:
    """``diffraflow`` and every module of its three packages (not ``__main__``, which runs the CLI)."""
    names = ["diffraflow"]
    for package in PACKAGES:
        names.append(package)
        path = importlib.import_module(package).__path__
        names += [info.name for info in pkgutil.walk_packages(path, prefix=f"{package}.")
                  if not info.name.endswith("__main__")]
    return names


def find_examples(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    tests = doctest.DocTestFinder(exclude_empty=True).find(module, module_name)
    return sorted((t for t in tests if t.examples), key=lambda t: t.name)


def _cases() -> list:
    cases = []
    for name in module_names():
        try:
            found = find_examples(name)
        except Exception as exc:  # reported by the test below, not as a collection error of the whole file
            cases.append(pytest.param(name, None, repr(exc), id=name))
            continue
        cases += [pytest.param(name, test.name, None, id=test.name) for test in found]
    return cases


@pytest.mark.parametrize(("module_name", "test_name", "import_error"), _cases())
def test_docstring_example(module_name, test_name, import_error):
    assert import_error is None, f"{module_name} does not import: {import_error}"
    # Found again here: a DocTest's globals are cleared when it has run.
    test = next(t for t in find_examples(module_name) if t.name == test_name)
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)
