"""The tuner: search spaces, the trial launcher, the Optuna controller, the advisor, the recommendation.

Modules, in the order a search uses them:
  space      search-space YAML -> dimensions, objectives, constraints; params <-> TrialConfig
  study      Optuna storage, study and sampler; reading trials back as TrialRecords
  launcher   one subprocess per trial (`autotune trial`), pre-screening with `autotune plan`
  scoring    a TrialResult as Optuna objective values, constraints and state
  advisor    small rules that read a trial's memory report and propose the next config
  controller the search loop: workers per GPU, stop rule, Ctrl-C, resume
  recommend  the Pareto front and the policy that picks one config
  report     the front as a terminal table, and to MLflow
  progress   the rich progress bar
"""
