"""Which materials train the space-group classifier, and which are held out to judge it.

The six cubic space groups of the seed (Kaufmann et al., *Microsc.
Microanal.*, 2020) each get several materials of more than one structure type
where the group has them, so that a network has to learn the group rather
than a material. Some materials of every group are **held out**: never
simulated for training, only for evaluation. Every held-out material has a
structure type that some training material shares (FeAl is B2 like NiAl,
CsCl and CuZn; Mo is BCC like W, Ta and V...), so the held-out accuracy
measures generalisation to new chemistry and lattice parameters, as in the
seed's multi-material experiment.

All names are phases of :func:`~diffraflow.operators.crystallography.phases.get_phase`
(the library and its reference structures, each with its published source).

Examples
--------
>>> sorted(TRAIN_MATERIALS) == list(SPACE_GROUPS)
True
>>> class_weights(["ni", "al", "fe"])        # equal per class, split between its materials
[0.25, 0.25, 0.5]
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SPACE_GROUPS", "SPACE_GROUP_SYMBOLS", "TRAIN_MATERIALS", "HELD_OUT_MATERIALS", "class_weights",
           "class_name", "space_group_of"]

#: The six cubic space groups of the seed, in class order.
SPACE_GROUPS = (221, 223, 225, 227, 229, 230)
#: Hermann-Mauguin symbols, for class names.
SPACE_GROUP_SYMBOLS = {221: "Pm-3m", 223: "Pm-3n", 225: "Fm-3m", 227: "Fd-3m", 229: "Im-3m", 230: "Ia-3d"}

#: Materials simulated for training, by space group.
TRAIN_MATERIALS: dict[int, tuple[str, ...]] = {
    221: ("ni3al", "cu3au", "nial", "cuzn", "cscl", "srtio3"),     # L1_2, B2, perovskite
    223: ("cr3si", "v3si", "nb3sn", "nb3al"),                       # A15
    225: ("ni", "al", "ag", "pt", "tac", "nacl", "caf2"),           # A1, rock salt, fluorite
    227: ("si", "diamond", "alpha_sn", "mgal2o4"),                  # diamond, spinel
    229: ("fe", "w", "ta", "v"),                                    # A2
    230: ("yag", "pyrope", "andradite"),                            # garnet
}
#: Materials never trained on: the held-out evaluation.
HELD_OUT_MATERIALS: dict[int, tuple[str, ...]] = {
    221: ("feni3", "feal"),
    223: ("mo3si", "v3ga"),
    225: ("cu", "au", "nbc", "mgo"),
    227: ("ge", "fe3o4"),
    229: ("mo", "nb", "cr"),
    230: ("grossular", "almandine"),
}


def space_group_of(material: str) -> int:
    """The space-group number of a phase name.

    Examples
    --------
    >>> space_group_of("yag"), space_group_of("feal")
    (230, 221)
    """
    from diffraflow.operators.crystallography.phases import get_phase

    return int(get_phase(material).space_group.number)


def class_weights(materials: Sequence[str]) -> list[float]:
    """Sampling weight of each material so that every space group is drawn equally often.

    Examples
    --------
    >>> class_weights(["w", "mo", "si"])
    [0.25, 0.25, 0.5]
    """
    groups = [space_group_of(m) for m in materials]
    present = sorted(set(groups))
    return [1.0 / len(present) / groups.count(g) for g in groups]


def class_name(space_group: int) -> str:
    """``"Fm-3m (225)"`` for 225; the bare number for groups outside the six.

    Examples
    --------
    >>> class_name(229), class_name(12)
    ('Im-3m (229)', '12')
    """
    symbol = SPACE_GROUP_SYMBOLS.get(int(space_group))
    return f"{symbol} ({int(space_group)})" if symbol else str(int(space_group))
