"""vitolaunch: turn a YAML sweep spec into SLURM job arrays of VITO pretraining trials."""

__version__ = "0.1.0"
