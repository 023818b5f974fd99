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
    "REFERENCE_STRUCTURES",
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
    source: str = ""


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

def _cubic_a(a_angstrom: float) -> tuple[float, float, float, float, float, float]:
    # Published cubic cell edges are in Å; the library stores nm.
    return _cubic(round(a_angstrom / 10.0, 6))


_WYCKOFF_1 = "R. W. G. Wyckoff, Crystal Structures, 2nd ed., vol. 1, Interscience, New York (1963)"
_WYCKOFF_2 = "R. W. G. Wyckoff, Crystal Structures, 2nd ed., vol. 2, Interscience, New York (1964)"
_WYCKOFF_3 = "R. W. G. Wyckoff, Crystal Structures, 2nd ed., vol. 3, Interscience, New York (1965)"
_PEARSON = ("P. Villars and L. D. Calvert, Pearson's Handbook of Crystallographic Data for Intermetallic "
            "Phases, 2nd ed., ASM International (1991)")
_A15 = "A15 (Cr3Si type, Pm-3n): B at 2a (0,0,0), A at 6c (1/4,0,1/2)"
_GARNET = "garnet (Ia-3d): X at 24c (1/8,0,1/4), Y at 16a (0,0,0), Z at 24d (3/8,0,1/4), O at 96h (x,y,z)"
_SPINEL_ORIGIN = ("; Fd-3m origin choice 1 as diffpy expands it: the published origin-2 coordinates "
                  "(A 1/8,1/8,1/8; B 1/2,1/2,1/2; O u,u,u) shifted by +1/8")

#: Reference structures for space-group learning, beyond :data:`PHASE_LIBRARY`:
#: several materials of each of the six cubic space groups 221, 223, 225, 227,
#: 229 and 230, each built from a published lattice parameter and its Wyckoff
#: positions (``source``). :func:`get_phase` finds them by name like library
#: phases; they are kept apart so the library's own tests (every library phase
#: is simulated and Hough-indexed) do not grow with them. Lattice parameters
#: are room-temperature values in Å as published, stored in nm.
REFERENCE_STRUCTURES: dict[str, PhaseDefinition] = {
    d.name: d
    for d in [
        # -- 221 Pm-3m: L1_2, B2, perovskite ---------------------------------------------------------
        PhaseDefinition("cu3au", 221, _cubic_a(3.7493), (("Au", (0.0, 0.0, 0.0)), ("Cu", (0.0, 0.5, 0.5))),
                        "Cu3Au, L1_2 (ordered)", "goldenrod", f"{_PEARSON}; a = 3.7493 Å"),
        PhaseDefinition("feni3", 221, _cubic_a(3.5523), (("Fe", (0.0, 0.0, 0.0)), ("Ni", (0.0, 0.5, 0.5))),
                        "FeNi3, L1_2 (ordered)", "slateblue", f"{_PEARSON}; a = 3.5523 Å"),
        PhaseDefinition("cuzn", 221, _cubic_a(2.9539), (("Cu", (0.0, 0.0, 0.0)), ("Zn", (0.5, 0.5, 0.5))),
                        "beta'-brass CuZn, B2 (CsCl type)", "darkorange", f"{_PEARSON}; a = 2.9539 Å"),
        PhaseDefinition("cscl", 221, _cubic_a(4.123), (("Cs", (0.0, 0.0, 0.0)), ("Cl", (0.5, 0.5, 0.5))),
                        "caesium chloride, B2", "teal", f"{_WYCKOFF_1}; a = 4.123 Å"),
        PhaseDefinition("srtio3", 221, _cubic_a(3.905),
                        (("Sr", (0.0, 0.0, 0.0)), ("Ti", (0.5, 0.5, 0.5)), ("O", (0.0, 0.5, 0.5))),
                        "strontium titanate, cubic perovskite (E2_1)", "plum", f"{_WYCKOFF_2}; a = 3.905 Å"),
        # -- 223 Pm-3n: A15 ------------------------------------------------------------------------
        *(PhaseDefinition(name, 223, _cubic_a(a), ((b, (0.0, 0.0, 0.0)), (a_el, (0.25, 0.0, 0.5))),
                          f"{label}, A15", color, f"{_PEARSON}; a = {a} Å; {_A15}")
          for name, label, a_el, b, a, color in [
              ("mo3si", "Mo3Si", "Mo", "Si", 4.8969, "khaki"),
              ("v3si", "V3Si", "V", "Si", 4.7236, "darkkhaki"),
              ("nb3sn", "Nb3Sn", "Nb", "Sn", 5.2894, "olive"),
              ("nb3al", "Nb3Al", "Nb", "Al", 5.187, "yellowgreen"),
              ("v3ga", "V3Ga", "V", "Ga", 4.8166, "darkolivegreen"),
          ]),
        # -- 225 Fm-3m: A1 metals, rock salt, fluorite ---------------------------------------------------
        *(PhaseDefinition(name, 225, _cubic_a(a), ((el, (0.0, 0.0, 0.0)),), f"{label}, FCC (A1)", color,
                          f"{_WYCKOFF_1}; a = {a} Å; 4a (0,0,0)")
          for name, label, el, a, color in [
              ("ag", "silver", "Ag", 4.0857, "silver"),
              ("au", "gold", "Au", 4.0782, "gold"),
              ("pt", "platinum", "Pt", 3.9242, "lightsteelblue"),
              ("pb", "lead", "Pb", 4.9502, "dimgray"),
          ]),
        *(PhaseDefinition(name, 225, _cubic_a(a), ((m, (0.0, 0.0, 0.0)), (x, (0.5, 0.5, 0.5))),
                          f"{label}, rock salt (B1)", color, f"{_WYCKOFF_1}; a = {a} Å; 4a (0,0,0), 4b (1/2,1/2,1/2)")
          for name, label, m, x, a, color in [
              ("nacl", "sodium chloride", "Na", "Cl", 5.6402, "lightblue"),
              ("mgo", "periclase MgO", "Mg", "O", 4.2112, "wheat"),
              ("tic", "titanium carbide", "Ti", "C", 4.3274, "rosybrown"),
              ("nbc", "niobium carbide", "Nb", "C", 4.4702, "sienna"),
              ("tac", "tantalum carbide", "Ta", "C", 4.4547, "saddlebrown"),
          ]),
        PhaseDefinition("caf2", 225, _cubic_a(5.4626), (("Ca", (0.0, 0.0, 0.0)), ("F", (0.25, 0.25, 0.25))),
                        "fluorite CaF2 (C1)", "lavender", f"{_WYCKOFF_1}; a = 5.4626 Å; 4a, 8c (1/4,1/4,1/4)"),
        # -- 227 Fd-3m (origin choice 1): diamond, spinel ----------------------------------------------
        *(PhaseDefinition(name, 227, _cubic_a(a), ((el, (0.0, 0.0, 0.0)),), f"{label}, diamond (A4)", color,
                          f"{_WYCKOFF_1}; a = {a} Å; 8a (0,0,0), origin choice 1")
          for name, label, el, a, color in [
              ("ge", "germanium", "Ge", 5.6579, "darkgray"),
              ("diamond", "diamond carbon", "C", 3.5668, "lightcyan"),
              ("alpha_sn", "grey tin (alpha-Sn)", "Sn", 6.4892, "gainsboro"),
          ]),
        PhaseDefinition("mgal2o4", 227, _cubic_a(8.0832),
                        (("Mg", (0.25, 0.25, 0.25)), ("Al", (0.625, 0.625, 0.625)), ("O", (0.3874, 0.3874, 0.3874))),
                        "spinel MgAl2O4 (H1_1)", "pink",
                        f"{_WYCKOFF_3}; a = 8.0832 Å, u(O) = 0.2624 (origin 2){_SPINEL_ORIGIN}"),
        PhaseDefinition("fe3o4", 227, _cubic_a(8.3941),
                        (("Fe", (0.25, 0.25, 0.25)), ("Fe", (0.625, 0.625, 0.625)), ("O", (0.3799, 0.3799, 0.3799))),
                        "magnetite Fe3O4, inverse spinel", "black",
                        f"M. E. Fleet, Acta Cryst. B37, 917 (1981); a = 8.3941 Å, u(O) = 0.2549 (origin 2)"
                        f"{_SPINEL_ORIGIN}"),
        # -- 229 Im-3m: A2 metals ----------------------------------------------------------------------
        *(PhaseDefinition(name, 229, _cubic_a(a), ((el, (0.0, 0.0, 0.0)),), f"{label}, BCC (A2)", color,
                          f"{_WYCKOFF_1}; a = {a} Å; 2a (0,0,0)")
          for name, label, el, a, color in [
              ("w", "tungsten", "W", 3.1652, "steelblue"),
              ("mo", "molybdenum", "Mo", 3.1470, "cadetblue"),
              ("ta", "tantalum", "Ta", 3.3058, "navy"),
              ("nb", "niobium", "Nb", 3.3004, "mediumpurple"),
              ("v", "vanadium", "V", 3.0240, "seagreen"),
              ("cr", "chromium", "Cr", 2.8846, "mediumseagreen"),
          ]),
        # -- 230 Ia-3d: garnets --------------------------------------------------------------------------
        *(PhaseDefinition(name, 230, _cubic_a(a),
                          ((x, (0.125, 0.0, 0.25)), (y, (0.0, 0.0, 0.0)), (z, (0.375, 0.0, 0.25)), ("O", oxygen)),
                          f"{label}, garnet", color, f"{source}; a = {a} Å, O at {oxygen}; {_GARNET}")
          for name, label, x, y, z, a, oxygen, color, source in [
              ("yag", "yttrium aluminium garnet Y3Al5O12", "Y", "Al", "Al", 12.000, (-0.0306, 0.0512, 0.1500),
               "crimson", "F. Euler and J. A. Bruce, Acta Cryst. 19, 971 (1965)"),
              ("grossular", "grossular Ca3Al2Si3O12", "Ca", "Al", "Si", 11.845, (0.0381, 0.0449, 0.6514),
               "forestgreen", "G. A. Novak and G. V. Gibbs, Am. Mineral. 56, 791 (1971)"),
              ("andradite", "andradite Ca3Fe2Si3O12", "Ca", "Fe", "Si", 12.048, (0.0395, 0.0486, 0.6554),
               "darkgoldenrod", "G. A. Novak and G. V. Gibbs, Am. Mineral. 56, 791 (1971)"),
              ("pyrope", "pyrope Mg3Al2Si3O12", "Mg", "Al", "Si", 11.459, (0.03284, 0.05014, 0.65330),
               "darkred", "T. Armbruster, C. A. Geiger and G. A. Lager, Am. Mineral. 77, 512 (1992)"),
              ("almandine", "almandine Fe3Al2Si3O12", "Fe", "Al", "Si", 11.526, (0.03402, 0.04901, 0.65278),
               "maroon", "T. Armbruster, C. A. Geiger and G. A. Lager, Am. Mineral. 77, 512 (1992)"),
          ]),
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
        A library name (case-insensitive, e.g. ``"Ni"``, ``"ni3al"``), the name
        of one of the :data:`REFERENCE_STRUCTURES` (``"yag"``, ``"w"``...) or
        the path of a ``.cif`` file.

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
    >>> get_phase("yag").space_group.number
    230
    """
    text = str(name_or_cif)
    if text.lower().endswith(".cif"):
        return _phase_from_cif(Path(text))
    key = PHASE_ALIASES.get(text.lower(), text.lower())
    if key not in PHASE_LIBRARY and key not in REFERENCE_STRUCTURES:
        known = list(PHASE_LIBRARY) + list(PHASE_ALIASES) + list(REFERENCE_STRUCTURES)
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SchemaError(
            "phase",
            f"unknown phase {text!r}",
            f"{hint}use one of {', '.join(sorted(PHASE_LIBRARY))} (or a reference structure, see "
            "REFERENCE_STRUCTURES) or the path of a .cif file",
        )
    return _definition_to_phase(PHASE_LIBRARY.get(key) or REFERENCE_STRUCTURES[key])


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
