"""What a sweep found: trial states (the tracking record merged with the scheduler's), status, compare, the
sweep's parent run (summary, plots) and the MLflow UI settings.

May import: spec, tracking, backends and the foundation (errors, workspace); never job, launch or cli.
"""
