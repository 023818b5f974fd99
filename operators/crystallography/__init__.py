"""Crystal structures: the built-in phase library, CIF loading, reflector families."""

from diffraflow.operators.crystallography.phases import (
    PHASE_LIBRARY,
    PhaseDefinition,
    get_phase,
    phase_from_record,
    phase_to_record,
)

__all__ = ["PHASE_LIBRARY", "PhaseDefinition", "get_phase", "phase_from_record", "phase_to_record"]
