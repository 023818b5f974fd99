"""The schedule of a run: which steps compute a pass in each round, decided round by round.

A **round** is one pass over the scan in which every chunk task runs the
steps that need it. Steps with a fixed number of passes know their schedule
in advance; **iterative** steps (NMF, fuzzy c-means) decide after each pass
whether to go on (:class:`~diffraflow.operators.base.NextPass`), to run one last pass
that keeps per-frame outputs (:class:`~diffraflow.operators.base.LastPass`), or to stop
(their final outputs). So the schedule is built one round at a time:

* a step starts in the round in which the step that provides its frames (the
  last earlier step with a ``frames`` output) runs its final pass, since the
  final frames are made in the same chunk task; steps with no provider start
  in round 0;
* a finished frames provider still feeds later steps: its frames are
  recomputed from its final state in each chunk task (``provide``), or read
  back from the result store when they were materialised (``load``), so an
  expensive step (a neural network) runs once however many passes follow.

:class:`Schedule` keeps each step's status and is saved with every finished
round, so a resumed run continues with exactly the same schedule.

Examples
--------
>>> import numpy as np
>>> from diffraflow.flow.pipeline import Pipeline
>>> from diffraflow.operators.stats.mean_pattern import MeanPattern
>>> from diffraflow.operators.decomposition.incremental_pca import IncrementalPCA
>>> from diffraflow.operators.base import InputSpec
>>> plan = Pipeline([MeanPattern(), IncrementalPCA(n_components=1)]).resolve(
...     InputSpec((2, 2), (3, 3), np.dtype("u1")))
>>> schedule = Schedule(plan)
>>> first = schedule.next_round()
>>> first.active, first.final
(('mean_pattern', 'incremental_pca'), {'mean_pattern': True, 'incremental_pca': False})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from diffraflow.operators.base import LastPass, NextPass
from diffraflow.schemas.errors import PipelineError

if TYPE_CHECKING:
    from diffraflow.flow.pipeline import ResolvedPipeline, ResolvedStep

__all__ = ["StepStatus", "ChainLink", "RoundPlan", "Schedule"]


@dataclass
class StepStatus:
    """Where one step stands: started in which round, passes done, whether the next pass is its last."""

    started: int | None = None
    passes_done: int = 0
    final_next: bool = False
    done: bool = False

    def to_record(self) -> dict[str, Any]:
        return {"started": self.started, "passes_done": self.passes_done, "final_next": self.final_next,
                "done": self.done}


@dataclass(frozen=True)
class ChainLink:
    """One step of a chunk task's chain and what it does there.

    ``compute``: an active step runs its pass; ``provide``: a finished frames
    provider recomputes its frames for later steps; ``load``: a finished,
    materialised provider's frames are read from the result store.
    """

    step: str
    action: str  # "compute" | "provide" | "load"
    pass_index: int
    final: bool


@dataclass(frozen=True)
class RoundPlan:
    """What the chunk tasks of one round do.

    Attributes
    ----------
    round
        The round number (0-based).
    chain
        The links every chunk task runs, in pipeline order.
    reads_source
        False when the chain starts from materialised frames (no raw read).
    """

    round: int
    chain: tuple[ChainLink, ...]
    reads_source: bool = True

    @property
    def active(self) -> tuple[str, ...]:
        """Steps computing a pass this round."""
        return tuple(link.step for link in self.chain if link.action == "compute")

    @property
    def final(self) -> dict[str, bool]:
        """Per active step: is this its final pass (per-frame outputs kept)?"""
        return {link.step: link.final for link in self.chain if link.action == "compute"}

    def link(self, step: str) -> ChainLink | None:
        """The chain link of ``step`` in this round, if any."""
        return next((link for link in self.chain if link.step == step), None)


@dataclass
class Schedule:
    """Round-by-round schedule of a resolved pipeline (see the module docs).

    Parameters
    ----------
    plan
        The :class:`~diffraflow.flow.pipeline.ResolvedPipeline`.
    materialized
        Names of frames steps whose final frames are stored in the result store.
    """

    plan: ResolvedPipeline
    materialized: frozenset[str] = frozenset()
    status: dict[str, StepStatus] = field(default_factory=dict)
    rounds_run: int = 0

    def __post_init__(self) -> None:
        for step in self.plan.steps:
            self.status.setdefault(step.name, StepStatus())

    # -- queries ------------------------------------------------------------------------
    def finished(self) -> bool:
        """True when every step is done."""
        return all(s.done for s in self.status.values())

    def _startable(self, step: ResolvedStep) -> bool:
        # A step may start in the round where its provider runs its final pass: the provider's final
        # frames are computed in the same chunk task, just before the step sees them.
        if step.provider is None:
            return True
        provider = self.status[step.provider]
        return provider.done or (provider.started is not None and provider.final_next)

    def next_round(self) -> RoundPlan | None:
        """The plan of the next round (starting steps whose frames are ready), or None when all are done."""
        if self.finished():
            return None
        r = self.rounds_run
        for step in self.plan.steps:
            status = self.status[step.name]
            if status.started is None and self._startable(step):
                status.started = r
                status.final_next = step.op.max_passes() <= 1
        active = [s for s in self.plan.steps if self.status[s.name].started is not None
                  and not self.status[s.name].done]
        if not active:
            raise PipelineError("pipeline", "no step can start: a frames provider never finishes",
                                "check the pipeline's frames steps")
        stop = max(s.index for s in active)
        links: list[ChainLink] = []
        for step in self.plan.steps[: stop + 1]:
            status = self.status[step.name]
            if step in active:
                links.append(ChainLink(step.name, "compute", status.passes_done, status.final_next))
            elif status.done and step.frames_output:
                if step.name in self.materialized:
                    # stored frames replace whatever providers since the last compute would have made
                    while links and links[-1].action != "compute":
                        links.pop()
                    links.append(ChainLink(step.name, "load", status.passes_done - 1, True))
                else:
                    links.append(ChainLink(step.name, "provide", status.passes_done - 1, True))
        while links and links[-1].action != "compute":
            links.pop()  # providers after the last active step feed nothing
        chain = tuple(links)
        reads_source = not (chain and chain[0].action == "load")
        return RoundPlan(r, chain, reads_source)

    def has_reductions(self, plan: RoundPlan) -> bool:
        """True when some active step merges partials this round."""
        steps = {s.name: s for s in self.plan.steps}
        return any(not link.final or steps[link.step].reduced for link in plan.chain if link.action == "compute")

    # -- after a round ------------------------------------------------------------------
    def interpret(self, step: ResolvedStep, result: Any, where: str) -> tuple[str, Any]:
        """Classify what ``finalize`` returned after a pass: ``("state", s)`` or ``("outputs", dict)``.

        Updates the step's status (passes done, whether the next pass is the
        last, done). Fixed-pass operators may return a plain dict as the state
        before their last pass.
        """
        status = self.status[step.name]
        was_final = status.final_next
        status.passes_done += 1
        limit = step.op.max_passes()
        if was_final:
            if isinstance(result, NextPass | LastPass):
                raise PipelineError(where, "finalize() asked for another pass after its final pass",
                                    "return the final outputs (a dict) after the pass with ctx.final_pass")
            status.done = True
            return "outputs", result or {}
        if isinstance(result, LastPass):
            status.final_next = True
            return "state", result.state
        if isinstance(result, NextPass):
            # The last allowed pass must be the one that keeps per-frame outputs.
            status.final_next = status.passes_done + 1 >= limit
            return "state", result.state
        status.final_next = status.passes_done + 1 >= limit
        return "state", result

    def end_round(self) -> None:
        """Count the round as run."""
        self.rounds_run += 1

    # -- persistence --------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """A JSON-able record of the statuses (saved with each finished round)."""
        return {"rounds_run": self.rounds_run, "status": {k: v.to_record() for k, v in self.status.items()}}

    def restore(self, record: dict[str, Any]) -> None:
        """Continue from a record written by :meth:`to_record`."""
        self.rounds_run = int(record["rounds_run"])
        for name, item in dict(record["status"]).items():
            if name in self.status:
                self.status[name] = StepStatus(
                    started=None if item["started"] is None else int(item["started"]),
                    passes_done=int(item["passes_done"]), final_next=bool(item["final_next"]),
                    done=bool(item["done"]))
