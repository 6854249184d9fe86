"""lrtune's TPE: multivariate and grouped, each parameter group drawn when the trial first
asks for one of its parameters.

Optuna's grouped TPE draws every group of the search space before the trial's first
parameter. lrtune's space is conditional: a family's and an optimizer's own parameters form
17 groups of which a trial uses three (base LR, family and optimizer; the family's; the
optimizer's), and each draw fits two Parzen estimators over every trial of the study. Drawing
a group on first use keeps the joint draw within each group, as Optuna's, and does a fifth of
the work. The groups themselves are kept and grown by the trials finished since the last
trial; Optuna recomputes them from every finished trial for each trial it samples.

The constant liar reads a running trial's parameters as stored, which hold every group it drew
once its sampling is done (a group's parameters are suggested one after another): Optuna's
grouped TPE also stores all its draws as a note on the trial, one more write per trial, for
the draws it made before the trial suggested them, including the groups never used. lrtune's
writes none.

In a horizon ladder's study, TPE models each configuration once, at its latest run
(``horizon.latest_runs``): a promoted run repeats its parent's parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from optuna.distributions import check_distribution_compatibility
from optuna.samplers import TPESampler

from lrtune import horizon
from lrtune import optuna_internals as internals

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial

DRAWN_TRIALS = 64  # trials whose drawn groups are kept (trials sample one after another)


class LazyGroupTPESampler(TPESampler):
    """``TPESampler(multivariate=True, group=True, **kwargs)``, drawing groups on first use."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(multivariate=True, group=True, **kwargs)
        self._relative_space: dict[str, BaseDistribution] = {}  # this trial's, as inferred
        self._drawn: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._groups = internals.search_space_group()
        self._grouped: set[int] = set()  # trial ids whose parameters the groups hold
        self._grouped_study: int | None = None

    def keep_groups_of(self, previous: object) -> None:
        """Start from the groups ``previous`` (this study's sampler before a reseed) kept."""
        if isinstance(previous, LazyGroupTPESampler):
            self._groups, self._grouped, self._grouped_study = \
                previous._groups, previous._grouped, previous._grouped_study

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial
                                    ) -> dict[str, BaseDistribution]:
        """Optuna's grouped space (from COMPLETE and PRUNED trials), grown by the trials
        finished since the last call: finished trials never change, and the groups do not
        depend on the order trials are added in."""
        study_id = internals.study_id(study)
        if self._grouped_study != study_id:
            self._groups, self._grouped, self._grouped_study = \
                internals.search_space_group(), set(), study_id
        for finished in internals.finished_trials(study):
            trial_id = internals.trial_id(finished)
            if trial_id not in self._grouped:
                self._groups.add_distributions(finished.distributions)
                self._grouped.add(trial_id)
        internals.set_tpe_groups(self, self._groups)
        return {name: distribution for sub_space in self._groups.search_spaces
                for name, distribution in sorted(sub_space.items()) if not distribution.single()}

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        self._relative_space = search_space  # the groups are drawn in sample_independent
        return {}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        study = internals.trials_view(study, horizon.latest_runs)
        group = self._group_of(param_name, param_distribution)
        drawn = self._drawn_for(internals.trial_id(trial))
        if group is not None and param_name not in drawn:
            drawn.update(internals.sample_tpe_group(self, study, trial, group))  # {}: start-up
        if param_name in drawn and internals.distribution_contains(param_distribution,
                                                                   drawn[param_name]):
            return drawn[param_name]
        return super().sample_independent(study, trial, param_name, param_distribution)

    def _group_of(self, name: str, distribution: BaseDistribution
                  ) -> dict[str, BaseDistribution] | None:
        """The relative group holding ``name``, as Optuna's ``sample_relative`` draws it
        (without single-valued parameters); None when ``name`` is not relative."""
        space = self._relative_space
        groups = internals.tpe_groups(self)
        if name not in space or groups is None:
            return None
        try:
            check_distribution_compatibility(space[name], distribution)
        except ValueError:
            return None
        for sub_space in groups.search_spaces:
            if name in sub_space:
                return {n: d for n, d in sorted(sub_space.items()) if n in space}
        return None

    def _drawn_for(self, trial_id: int) -> dict[str, Any]:
        if trial_id not in self._drawn:
            self._drawn[trial_id] = {}
            while len(self._drawn) > DRAWN_TRIALS:
                self._drawn.popitem(last=False)
        return self._drawn[trial_id]
