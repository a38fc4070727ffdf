"""Every name autotune stores on Optuna trials and studies, in one place.

A study's storage is the only thing its workers, `autotune pareto`, the exporters and the tracker
share, so these names are a file format: renaming one orphans every study written before. This
module sits below `autotune.result` and `autotune.tuner` so that both read the same names without an
upward import. (The MLflow tags live in `autotune.tracking`: they name runs, not study data.)
"""
from __future__ import annotations

# -- trial user attributes ----------------------------------------------------------------------
USER_ATTR_CONFIG = "autotune.config"               # the trial's TrialConfig (dict)
USER_ATTR_RESULT = "autotune.result"               # its TrialResult (dict); a trial without one did not count
USER_ATTR_REASON = "autotune.advisor_reason"       # why it was queued: "baseline", the advisor's reason, or none
USER_ATTR_SURPLUS = "autotune.surplus"             # claimed after the study was full; never ran
USER_ATTR_CANCELLED = "autotune.cancelled"         # ended by Ctrl-C or an error; its config went back to the queue
USER_ATTR_INVALID = "autotune.invalid"             # the sampled combination failed validation; why
USER_ATTR_OWNER = "autotune.owner"                 # the controller running the trial: see autotune.owner
USER_ATTR_OWNER_TRIAL = "autotune.owner_trial"     # the trial number USER_ATTR_OWNER was written for

# -- study user attributes ----------------------------------------------------------------------
STUDY_ATTR_OBJECTIVES = "autotune.objectives"      # [metric, ...] in the study's direction order
STUDY_ATTR_BUDGET = "autotune.budget_gb"
STUDY_ATTR_DEFINITION = "autotune.definition"      # what defines the study (autotune.tuner.definition)
STUDY_ATTR_POLICY = "autotune.policy"              # the recommendation policy (autotune.tuner.recommend)
STUDY_ATTR_BASELINE_PLAN = "autotune.baseline_plan"   # the baseline's full-size plan (TrialResult dict)
STUDY_ATTR_REWARD_STEPS = "autotune.reward_steps"  # the reward runs' length, settled once per study
STUDY_ATTR_REWARD_PREFIX = "autotune.reward."      # + a reward key: that key's RewardOutcome (dict)
