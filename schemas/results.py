"""Result schemas: what a result store holds and how its variables are named.

A result store is a Zarr v3 group with ``diffraflow.kind == "result"``. Each
*product* (a crystal map, a decomposition, class probabilities, restored
patterns, a virtual image...) is a set of variables with fixed names and
dimensions, listed in the group attribute ``results``::

    results:
      crystal_map: {"operator": "hough_index", "variables": [...], "phases": [...]}

Variables of a product may be prefixed (``<prefix>/<name>``, a Zarr
subgroup) when a pipeline holds two products of one kind.

Examples
--------
>>> spec = PRODUCTS["crystal_map"]
>>> spec.variables["rotation"].dims
('scan_y', 'scan_x', 'quat')
>>> sorted(PRODUCTS)
['class_probabilities', 'crystal_map', 'decomposition', 'restored_patterns']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from diffraflow.schemas.errors import SchemaError

__all__ = ["VariableSpec", "ProductSpec", "PRODUCTS", "validate_product", "validate_result_group"]


@dataclass(frozen=True)
class VariableSpec:
    """Expected dims and dtype kind of one result variable.

    Examples
    --------
    >>> VariableSpec(("scan_y", "scan_x"), "f", "confidence index").dims
    ('scan_y', 'scan_x')
    """

    dims: tuple[str, ...]
    kind: str  # numpy dtype kind(s) accepted, e.g. "f" or "iu"
    description: str = ""
    required: bool = True


@dataclass(frozen=True)
class ProductSpec:
    """A result product: its variables and required attributes."""

    name: str
    variables: dict[str, VariableSpec]
    attributes: tuple[str, ...] = field(default_factory=tuple)
    description: str = ""


_NAV = ("scan_y", "scan_x")

PRODUCTS: dict[str, ProductSpec] = {
    "crystal_map": ProductSpec(
        "crystal_map",
        {
            "rotation": VariableSpec((*_NAV, "quat"), "f", "unit quaternion (w, x, y, z), orix convention: "
                                     "rotates sample to crystal (Bunge passive)"),
            "phase_id": VariableSpec(_NAV, "i", "index into the 'phases' attribute; -1 = not indexed"),
            "fit": VariableSpec(_NAV, "f", "mean angular deviation of fitted band normals, degrees"),
            "confidence": VariableSpec(_NAV, "f", "voting confidence index in [0, 1]"),
            "pattern_quality": VariableSpec(_NAV, "f", "pattern quality (Radon peak contrast)"),
            "n_bands": VariableSpec(_NAV, "iu", "number of bands detected"),
        },
        attributes=("phases",),
        description="orientation and phase per scan point (orix CrystalMap compatible)",
    ),
    "decomposition": ProductSpec(
        "decomposition",
        {
            "factors": VariableSpec(("component", "det_y", "det_x"), "f", "component patterns"),
            "loadings": VariableSpec((*_NAV, "component"), "f", "per-point weight of each component"),
            "explained_variance": VariableSpec(("component",), "f", "variance explained per component",
                                               required=False),
            "explained_variance_ratio": VariableSpec(("component",), "f", "share of the total variance per "
                                                     "component (the scree plot)", required=False),
            "memberships": VariableSpec((*_NAV, "component"), "f", "fuzzy-cluster membership per point "
                                        "(rows sum to 1)", required=False),
            "error": VariableSpec(("iteration",), "f", "loss or objective after each iteration (NaN after "
                                  "the last)", required=False),
            "svd_loadings": VariableSpec((*_NAV, "svd_component"), "f", "SVD loadings a method worked on "
                                         "(clustering, VCA)", required=False),
            "centres": VariableSpec(("component", "svd_component"), "f", "cluster centres in SVD-loading "
                                    "space", required=False),
        },
        attributes=("method",),
        description="SVD/PCA/ICA/NMF factors and loadings; fuzzy-clustering memberships as loadings",
    ),
    "class_probabilities": ProductSpec(
        "class_probabilities",
        {"probabilities": VariableSpec((*_NAV, "class"), "f", "softmax probability per class")},
        attributes=("class_names",),
        description="per-point class probabilities of a classifier",
    ),
    "restored_patterns": ProductSpec(
        "restored_patterns",
        {"patterns": VariableSpec((*_NAV, "det_y", "det_x"), "fu", "restored patterns")},
        attributes=("method",),
        description="patterns restored by a denoising model",
    ),
}


def validate_product(group, product: str, record: dict[str, Any], where: str) -> None:
    """Check that ``group`` holds ``product`` with the right variables and attributes.

    Parameters
    ----------
    group
        The Zarr group holding the variables (the root, or the product's prefix subgroup).
    product
        A key of :data:`PRODUCTS`.
    record
        The product's entry in the ``results`` attribute.
    where
        Store name for error messages.

    Examples
    --------
    >>> import zarr
    >>> g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> validate_product(g, "class_probabilities", {"class_names": ["a"]}, "r.zarr")
    Traceback (most recent call last):
    ...
    diffraflow.schemas.errors.SchemaError: r.zarr: class_probabilities.probabilities: variable is missing (fix: re-run the pipeline that writes class_probabilities)
    """
    if product not in PRODUCTS:
        raise SchemaError(f"{where}: results", f"unknown product {product!r}",
                          f"use one of {', '.join(sorted(PRODUCTS))}")
    spec = PRODUCTS[product]
    for name in spec.attributes:
        if name not in record:
            raise SchemaError(f"{where}: {product}", f"attribute {name!r} is missing",
                              f"store {name!r} in the product's results record")
    keys = set(group.array_keys())
    for name, var in spec.variables.items():
        if name not in keys:
            if var.required:
                raise SchemaError(f"{where}: {product}.{name}", "variable is missing",
                                  f"re-run the pipeline that writes {product}")
            continue
        arr = group[name]
        dims = tuple(arr.metadata.dimension_names or ())
        if dims != var.dims:
            raise SchemaError(f"{where}: {product}.{name}", f"dims {list(dims)}, expected {list(var.dims)}",
                              "write the variable with the schema's dimension names")
        if np.dtype(str(arr.dtype)).kind not in var.kind:
            raise SchemaError(f"{where}: {product}.{name}", f"dtype {arr.dtype} is not of kind {var.kind!r}",
                              "write the variable with the schema's dtype")


def validate_result_group(group, where: str) -> dict[str, Any]:
    """Validate every product listed in a result store's ``results`` attribute.

    Examples
    --------
    >>> import zarr
    >>> g = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    >>> validate_result_group(g, "r.zarr")["products"]
    []
    """
    results = dict(group.attrs.get("results", {}))
    for product_key, record in results.items():
        record = dict(record)
        product = record.get("product", product_key)
        if product not in PRODUCTS:
            continue  # free-form outputs (virtual images, mean patterns) have no fixed schema
        prefix = record.get("prefix")
        target = group[prefix] if prefix else group
        validate_product(target, product, record, where)
    return {"products": sorted(results)}
