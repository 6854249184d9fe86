"""Names of the user attributes lrtune writes on Optuna trials and studies."""

# Trial user attributes.
ATTR_REASON = "reason"  # diverged | failed: <error> | lost: <worker gone>
ATTR_LR_CURVE = "lr_curve"  # LR at the first step of each epoch
ATTR_METRICS = "metrics"  # last epoch's metrics
ATTR_CONFIG = "config"  # the decoded TrialConfig (schedule + optimizer)
ATTR_STEPS_PER_EPOCH = "steps_per_epoch"
ATTR_HORIZON = "horizon"  # the horizon ladder's rung: {"rung", "rungs", "fraction", ...}

# Study user attributes (shown in the dashboard).
STUDY_ATTR_SPEC = "lrtune_spec"
STUDY_ATTR_LR_RANGE = "lrtune_lr_range"  # {"low", "high", "by_optimizer"} of the range test
