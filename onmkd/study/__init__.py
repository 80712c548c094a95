"""Studies: search spaces, Optuna sweeps, paper plans, the runs of a plan, profiling, reports and
figures."""
