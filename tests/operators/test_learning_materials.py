"""Reference structures for space-group learning: built right from their published data (issue 11, item 1)."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from diffraflow.operators.crystallography.phases import (
    PHASE_LIBRARY,
    REFERENCE_STRUCTURES,
    get_phase,
    phase_from_record,
    phase_to_record,
)
from diffraflow.operators.learning.materials import (
    HELD_OUT_MATERIALS,
    SPACE_GROUPS,
    TRAIN_MATERIALS,
    class_name,
    class_weights,
    space_group_of,
)
from diffraflow.schemas.errors import SchemaError

#: Atoms per conventional cell, from the structure type (Z times atoms per formula unit).
CELL_ATOMS = {
    "cu3au": 4, "feni3": 4, "cuzn": 2, "cscl": 2, "srtio3": 5,
    "mo3si": 8, "v3si": 8, "nb3sn": 8, "nb3al": 8, "v3ga": 8,
    "ag": 4, "au": 4, "pt": 4, "pb": 4, "nacl": 8, "mgo": 8, "tic": 8, "nbc": 8, "tac": 8, "caf2": 12,
    "ge": 8, "diamond": 8, "alpha_sn": 8, "mgal2o4": 56, "fe3o4": 56,
    "w": 2, "mo": 2, "ta": 2, "nb": 2, "v": 2, "cr": 2,
    "yag": 160, "grossular": 160, "andradite": 160, "pyrope": 160, "almandine": 160,
}
#: Structure-type words of the descriptions.
STRUCTURE_TYPES = ("L1_2", "B2", "A15", "A1", "rock salt", "fluorite", "diamond", "spinel", "A2", "garnet")
#: Shortest bond of each structure type, Å (nearest-neighbour distances of the published cells, rounded down).
MIN_BOND = {"spinel": 1.85, "garnet": 1.6, "default": 1.5}


def _expanded(name: str):
    from diffsims.crystallography.reciprocal_lattice_vector import _expand_unit_cell

    phase = get_phase(name)
    cell = _expand_unit_cell(phase.space_group, phase.structure)
    xyz = np.array([atom.xyz for atom in cell])
    return phase, cell, xyz


@pytest.mark.parametrize("name", sorted(REFERENCE_STRUCTURES))
def test_each_structure_expands_to_its_cell_without_clashes(name):
    phase, cell, xyz = _expanded(name)
    assert len(cell) == CELL_ATOMS[name], f"{name}: {len(cell)} atoms, {Counter(a.element for a in cell)}"
    a_angstrom = phase.structure.lattice.a * 10
    delta = xyz[:, None] - xyz[None]
    delta -= np.round(delta)  # nearest periodic image
    distance = np.linalg.norm(delta * a_angstrom, axis=-1)
    np.fill_diagonal(distance, np.inf)
    kind = "spinel" if name in ("mgal2o4", "fe3o4") else "garnet" if phase.space_group.number == 230 else "default"
    assert distance.min() >= MIN_BOND[kind], f"{name}: atoms {distance.min():.2f} Å apart"


@pytest.mark.parametrize("name", sorted(REFERENCE_STRUCTURES))
def test_each_structure_is_cubic_m3m_with_a_published_source(name):
    definition = REFERENCE_STRUCTURES[name]
    phase = get_phase(name)
    assert phase.point_group.name == "m-3m"
    assert phase.space_group.number == definition.space_group in SPACE_GROUPS
    a, b, c, alpha, beta, gamma = definition.lattice
    assert a == b == c and (alpha, beta, gamma) == (90.0, 90.0, 90.0)
    assert 0.25 < a < 1.3, "lattice parameters are stored in nm"
    published = re.search(r"a = ([0-9.]+) Å", definition.source)
    assert published and float(published.group(1)) == pytest.approx(a * 10, abs=1e-4), definition.source
    assert any(word in definition.source for word in ("Wyckoff", "Pearson", "Acta Cryst", "Am. Mineral"))
    assert phase_from_record(phase_to_record(phase)).space_group.number == definition.space_group


def test_the_library_itself_is_unchanged_and_names_do_not_collide():
    assert not set(REFERENCE_STRUCTURES) & set(PHASE_LIBRARY)
    assert sorted(PHASE_LIBRARY) == ["al", "austenite", "cr3si", "cu", "fe", "feal", "ferrite", "ni", "ni3al",
                                     "nial", "si"]
    with pytest.raises(SchemaError) as info:
        get_phase("yagg")
    assert "did you mean 'yag'?" in str(info.value) and "\n" not in str(info.value)


def test_every_group_has_several_training_and_held_out_materials():
    for group in SPACE_GROUPS:
        train, held = TRAIN_MATERIALS[group], HELD_OUT_MATERIALS[group]
        assert len(train) >= 3 and len(held) >= 2, group
        assert not set(train) & set(held)
        assert {space_group_of(m) for m in (*train, *held)} == {group}
    everything = [m for g in SPACE_GROUPS for m in (*TRAIN_MATERIALS[g], *HELD_OUT_MATERIALS[g])]
    assert len(everything) == len(set(everything))
    assert "ferrite" not in everything  # the library's duplicate of fe would leak into the held-out set


def test_held_out_structure_types_are_represented_in_training():
    # B2 FeAl is held out, B2 NiAl/CuZn/CsCl train; BCC Mo/Nb/Cr held out, W/Ta/V/Fe train.
    described = {m: (REFERENCE_STRUCTURES.get(m) or PHASE_LIBRARY[m]).description for g in SPACE_GROUPS
                 for m in (*TRAIN_MATERIALS[g], *HELD_OUT_MATERIALS[g])}
    for group in SPACE_GROUPS:
        trained = " ".join(described[m] for m in TRAIN_MATERIALS[group])
        for held in HELD_OUT_MATERIALS[group]:
            kinds = [k for k in STRUCTURE_TYPES if k in described[held]]
            assert kinds and all(k in trained for k in kinds), f"{held} ({described[held]}): not in training"


def test_class_weights_balance_the_groups_and_names_read_well():
    weights = class_weights(["ni", "al", "cu", "fe"])
    assert weights == [1 / 6, 1 / 6, 1 / 6, 0.5]
    assert class_name(230) == "Ia-3d (230)" and class_name(221) == "Pm-3m (221)"
