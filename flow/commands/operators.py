"""``diffraflow operators``: list registered operators, their backends, passes, outputs and parameters."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers
    from diffraflow.operators.base import Operator


def register(subparsers: Subparsers) -> None:
    """Add the ``operators`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("operators", help="list the operators a pipeline can use",
                                   description="List registered operators with backends, passes, outputs "
                                               "and parameters.")
    parser.add_argument("name", nargs="?", help="show only this operator")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import this module first (extra operators); repeatable")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def describe_operator(cls: type[Operator]) -> dict[str, Any]:
    """Backends, passes, outputs (resolved on a sample input when possible) and parameters of an operator class.

    Examples
    --------
    >>> from diffraflow.operators.base import Operator
    >>> describe_operator(Operator)["parameters"]
    []
    """
    import numpy as np
    from diffraflow.operators.base import InputSpec, operator_parameters

    passes: Any = cls.passes if isinstance(cls.passes, int) else "depends on parameters"
    outputs: Any = "depends on parameters"
    try:
        op = cls()
        passes = int(op.passes)
        spec = InputSpec((4, 4), (64, 64), np.dtype("uint16"), attrs=None)
        outputs = {name: {"kind": out.kind, "dtype": str(out.dtype), "dims": list(out.result_dims()),
                          "description": out.description}
                   for name, out in op.resolve(spec).items()}
    except Exception:
        pass
    doc = (cls.__doc__ or "").strip().splitlines()
    return {"name": cls.name, "summary": doc[0] if doc else "", "backends": list(cls.backends), "passes": passes,
            "outputs": outputs, "parameters": [{k: (v if k != "default" else _jsonable(v)) for k, v in p.items()}
                                               for p in operator_parameters(cls)]}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def run(args: argparse.Namespace) -> int:
    from diffraflow.flow.commands.run import import_plugins
    from diffraflow.operators.base import get_operator_class, list_operators

    import_plugins(args.plugin)
    classes = [get_operator_class(args.name, where="operators")] if args.name else list(list_operators().values())
    records = [describe_operator(cls) for cls in classes]
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return 0
    if not records:
        print("no operators registered")
    for rec in records:
        print(f"{rec['name']}  [{', '.join(rec['backends'])}; passes: {rec['passes']}]")
        if rec["summary"]:
            print(f"    {rec['summary']}")
        if isinstance(rec["outputs"], dict):
            for name, out in rec["outputs"].items():
                desc = f"  {out['description']}" if out["description"] else ""
                print(f"    output {name}: {out['kind']} {out['dtype']} {out['dims']}{desc}")
        else:
            print(f"    outputs: {rec['outputs']}")
        for p in rec["parameters"]:
            default = "required" if p["required"] else f"default {p['default']!r}"
            choices = f", one of {list(p['choices'])}" if p["choices"] else ""
            print(f"    param {p['name']} ({p['type']}, {default}{choices}): {p['doc']}")
        print()
    return 0
