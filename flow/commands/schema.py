"""``diffraflow schema``: export JSON Schemas so other tools can validate our stores."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

    from diffraflow.flow.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add the ``schema`` subcommand.

    Examples
    --------
    >>> import argparse; p = argparse.ArgumentParser().add_subparsers(); register(p)
    """
    parser = subparsers.add_parser("schema", help="print the JSON Schema of store or pipeline metadata",
                                   description="Print a JSON Schema (draft 2020-12).")
    parser.add_argument("which", nargs="?", default="scan", choices=["scan", "pipeline"],
                        help="scan: scan-cube attributes (default); pipeline: pipeline files")
    parser.add_argument("-o", "--output", help="write to this file instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.which == "scan":
        from diffraflow.schemas.cube import scan_attrs_json_schema

        schema = scan_attrs_json_schema()
    else:
        from diffraflow.schemas.pipeline import pipeline_json_schema

        schema = pipeline_json_schema()
    text = json.dumps(schema, indent=2)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0
