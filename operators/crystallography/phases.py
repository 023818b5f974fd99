"""Built-in library of crystal structures, and conversion to orix phases.

The library holds the structures the simulator and the indexer know by name:
FCC metals, BCC iron, the ordered L1\\ :sub:`2`, B2 and A15 intermetallics and
diamond silicon. Each entry is an *asymmetric unit* in the space-group setting
that diffpy.structure uses (origin choice 1 for Fd-3m), so expanding it by the
space group gives the conventional cell. Lattice parameters are in nanometres,
as kikuchipy and orix expect.

A phase can also be read from a CIF file, and any phase can be written to, and
read back from, a JSON-friendly record that the scan-cube schema stores.

Examples
--------
>>> phase = get_phase("ni")
>>> phase.space_group.number, round(phase.structure.lattice.a, 5)
(225, 0.35236)
>>> sorted(PHASE_LIBRARY)[:3]
['al', 'austenite', 'cr3si']
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffraflow.schemas.errors import SchemaError

__all__ = [
    "PHASE_LIBRARY",
    "PhaseDefinition",
    "get_phase",
    "phase_from_record",
    "phase_in_angstrom",
    "phase_to_record",
]


@dataclass(frozen=True)
class PhaseDefinition:
    """A crystal structure by its space group, cubic lattice and asymmetric unit.

    Parameters
    ----------
    name
        Short lower-case name used on the command line (``--phase ni``).
    space_group
        International Tables space-group number.
    lattice
        ``(a, b, c, alpha, beta, gamma)`` in nm and degrees.
    atoms
        Asymmetric unit as ``(element, (x, y, z))`` in fractional coordinates.
    description
        Human-readable name of the structure type.

    Examples
    --------
    >>> PHASE_LIBRARY["si"].space_group
    227
    """

    name: str
    space_group: int
    lattice: tuple[float, float, float, float, float, float]
    atoms: tuple[tuple[str, tuple[float, float, float]], ...]
    description: str = ""
    color: str = field(default="tab:blue")


def _cubic(a: float) -> tuple[float, float, float, float, float, float]:
    return (a, a, a, 90.0, 90.0, 90.0)


PHASE_LIBRARY: dict[str, PhaseDefinition] = {
    d.name: d
    for d in [
        PhaseDefinition("ni", 225, _cubic(0.35236), (("Ni", (0.0, 0.0, 0.0)),), "nickel, FCC (A1)", "tab:blue"),
        PhaseDefinition("al", 225, _cubic(0.40495), (("Al", (0.0, 0.0, 0.0)),), "aluminium, FCC (A1)", "tab:cyan"),
        PhaseDefinition("cu", 225, _cubic(0.36149), (("Cu", (0.0, 0.0, 0.0)),), "copper, FCC (A1)", "tab:orange"),
        PhaseDefinition("austenite", 225, _cubic(0.3595), (("Fe", (0.0, 0.0, 0.0)),), "gamma iron, FCC (A1)", "tab:red"),
        PhaseDefinition("fe", 229, _cubic(0.28665), (("Fe", (0.0, 0.0, 0.0)),), "alpha iron (ferrite), BCC (A2)", "tab:green"),
        PhaseDefinition("ferrite", 229, _cubic(0.28665), (("Fe", (0.0, 0.0, 0.0)),), "alpha iron, BCC (A2)", "tab:olive"),
        PhaseDefinition(
            "ni3al", 221, _cubic(0.3572), (("Al", (0.0, 0.0, 0.0)), ("Ni", (0.0, 0.5, 0.5))),
            "Ni3Al, L1_2 (Cu3Au type)", "tab:purple",
        ),
        PhaseDefinition(
            "nial", 221, _cubic(0.2887), (("Ni", (0.0, 0.0, 0.0)), ("Al", (0.5, 0.5, 0.5))),
            "NiAl, B2 (CsCl type)", "tab:brown",
        ),
        PhaseDefinition(
            "feal", 221, _cubic(0.2909), (("Fe", (0.0, 0.0, 0.0)), ("Al", (0.5, 0.5, 0.5))),
            "FeAl, B2 (CsCl type)", "tab:pink",
        ),
        PhaseDefinition("si", 227, _cubic(0.54310), (("Si", (0.0, 0.0, 0.0)),), "silicon, diamond (A4)", "tab:gray"),
        PhaseDefinition(
            "cr3si", 223, _cubic(0.4556), (("Si", (0.0, 0.0, 0.0)), ("Cr", (0.25, 0.0, 0.5))),
            "Cr3Si, A15", "gold",
        ),
    ]
}
#: Other names users type for library phases.
PHASE_ALIASES = {"nickel": "ni", "aluminium": "al", "aluminum": "al", "copper": "cu", "iron": "fe",
                 "alpha-fe": "fe", "gamma-fe": "austenite", "silicon": "si"}


def _definition_to_phase(definition: PhaseDefinition):
    from diffpy.structure import Atom, Lattice, Structure
    from orix.crystal_map import Phase

    structure = Structure(
        atoms=[Atom(element, xyz) for element, xyz in definition.atoms],
        lattice=Lattice(*definition.lattice),
    )
    return Phase(name=definition.name, space_group=definition.space_group, structure=structure,
                 color=definition.color)


def get_phase(name_or_cif: str | Path):
    """An orix ``Phase`` from the built-in library or from a CIF file.

    Parameters
    ----------
    name_or_cif
        A library name (case-insensitive, e.g. ``"Ni"``, ``"ni3al"``) or the
        path of a ``.cif`` file.

    Returns
    -------
    orix.crystal_map.Phase
        With space group and asymmetric-unit structure (lattice in nm).

    Raises
    ------
    SchemaError
        For an unknown name (naming the closest library entry) or an
        unreadable CIF file.

    Examples
    --------
    >>> get_phase("Fe").point_group.name
    'm-3m'
    """
    text = str(name_or_cif)
    if text.lower().endswith(".cif"):
        return _phase_from_cif(Path(text))
    key = PHASE_ALIASES.get(text.lower(), text.lower())
    if key not in PHASE_LIBRARY:
        close = difflib.get_close_matches(key, list(PHASE_LIBRARY) + list(PHASE_ALIASES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SchemaError(
            "phase",
            f"unknown phase {text!r}",
            f"{hint}use one of {', '.join(sorted(PHASE_LIBRARY))} or the path of a .cif file",
        )
    return _definition_to_phase(PHASE_LIBRARY[key])


def _phase_from_cif(path: Path):
    from orix.crystal_map import Phase

    if not path.is_file():
        raise SchemaError(str(path), "CIF file not found", "check the path given to --phase")
    try:
        phase = Phase.from_cif(str(path))
    except Exception as exc:  # diffpy raises many kinds of parser errors
        raise SchemaError(str(path), f"cannot parse CIF ({type(exc).__name__}: {exc})",
                          "check the file is a valid CIF with cell and atom-site loops") from None
    if phase.space_group is None:
        raise SchemaError(str(path), "CIF gives no space group",
                          "add _symmetry_Int_Tables_number or _space_group_IT_number") from None
    phase.name = phase.name or path.stem
    # CIF lattices are in Angstrom; orix and kikuchipy work in nm. Rebuild the
    # structure on a new lattice: rescaling the parsed lattice in place leaves
    # diffpy's cached Cartesian positions stale (expansion then gave 52 Ni atoms).
    lat = phase.structure.lattice
    if lat.a > 1.5:
        from diffpy.structure import Atom, Lattice, Structure

        nm = Lattice(lat.a / 10, lat.b / 10, lat.c / 10, lat.alpha, lat.beta, lat.gamma)
        atoms = [Atom(element_symbol(a.element), a.xyz.copy(), occupancy=a.occupancy) for a in phase.structure]
        phase.structure = Structure(atoms=atoms, lattice=nm)
    return phase


_SYMBOLS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm"
).split()


def element_symbol(element: Any) -> str:
    """An element symbol from a symbol or an atomic number (h5ebsd files store numbers).

    Examples
    --------
    >>> element_symbol("28"), element_symbol(13), element_symbol("Fe")
    ('Ni', 'Al', 'Fe')
    """
    text = str(element).strip()
    if text.isdigit() and 1 <= int(text) <= len(_SYMBOLS):
        return _SYMBOLS[int(text) - 1]
    return text


def phase_in_angstrom(phase):
    """A copy of an orix ``Phase`` whose lattice is in Ångström, for diffsims.

    orix and kikuchipy phases (and this library) carry nanometres, but
    diffsims computes Bragg angles and atomic scattering factors in Ångström.
    Handed a nanometre lattice it returns Bragg angles ten times too large
    (``nan`` beyond :math:`\\sin\\theta = 1`) and structure factors at the wrong
    :math:`\\sin\\theta/\\lambda`. A lattice with ``a >= 2`` is taken to be in
    Ångström already and only copied: no phase here (nor a CIF read by
    :func:`get_phase`, which converts to nm) has a 2 nm cell edge.

    The structure is rebuilt on a new lattice rather than rescaled in place:
    diffpy caches Cartesian positions against the old lattice. Debye-Waller
    factors are kept as they are (diffsims reads them as Ångström squared).

    Examples
    --------
    >>> ni = get_phase("ni")
    >>> round(phase_in_angstrom(ni).structure.lattice.a, 4), round(ni.structure.lattice.a, 5)
    (3.5236, 0.35236)
    >>> phase_in_angstrom(ni).point_group.name, len(phase_in_angstrom(get_phase("cr3si")).structure)
    ('m-3m', 2)
    """
    from diffpy.structure import Atom, Lattice, Structure

    copy = phase.deepcopy()
    lat = copy.structure.lattice
    if lat.a >= 2.0:
        return copy
    angstrom = Lattice(lat.a * 10, lat.b * 10, lat.c * 10, lat.alpha, lat.beta, lat.gamma)
    atoms = []
    for atom in copy.structure:
        new = Atom(atom.element, atom.xyz.copy(), occupancy=atom.occupancy)
        new.Uisoequiv = atom.Uisoequiv
        atoms.append(new)
    copy.structure = Structure(atoms=atoms, lattice=angstrom, title=copy.structure.title)
    return copy


def phase_to_record(phase) -> dict[str, Any]:
    """A JSON-friendly record of an orix ``Phase`` for the cube metadata.

    Examples
    --------
    >>> record = phase_to_record(get_phase("nial"))
    >>> record["space_group"], [a["element"] for a in record["atoms"]]
    (221, ['Ni', 'Al'])
    """
    structure = phase.structure
    lat = structure.lattice
    return {
        "name": phase.name,
        "space_group": int(phase.space_group.number) if phase.space_group is not None else None,
        "point_group": phase.point_group.name if phase.point_group is not None else None,
        "lattice": [float(lat.a), float(lat.b), float(lat.c),
                    float(lat.alpha), float(lat.beta), float(lat.gamma)],
        "atoms": [
            {"element": element_symbol(atom.element), "xyz": [float(v) for v in atom.xyz],
             "occupancy": float(atom.occupancy)}
            for atom in structure
        ],
        "color": phase.color,
    }


def phase_from_record(record: dict[str, Any]):
    """Rebuild an orix ``Phase`` from :func:`phase_to_record` output.

    Examples
    --------
    >>> phase = phase_from_record(phase_to_record(get_phase("cr3si")))
    >>> phase.space_group.number
    223
    """
    from diffpy.structure import Atom, Lattice, Structure
    from orix.crystal_map import Phase

    atoms = [Atom(a["element"], a["xyz"], occupancy=a.get("occupancy", 1.0))
             for a in record.get("atoms", [])]
    lattice = Lattice(*record["lattice"]) if record.get("lattice") else Lattice()
    kwargs: dict[str, Any] = {"name": record["name"], "structure": Structure(atoms=atoms, lattice=lattice)}
    if record.get("space_group"):
        kwargs["space_group"] = int(record["space_group"])
    elif record.get("point_group"):
        kwargs["point_group"] = record["point_group"]
    if record.get("color"):
        kwargs["color"] = record["color"]
    return Phase(**kwargs)
