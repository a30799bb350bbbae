"""`spul experiment`: reproduce the paper's tables and figures from a YAML config, resumably."""

from spul.experiments.config import ARTEFACTS, ExperimentConfig, load_config, parse_config
from spul.experiments.runner import Experiment, run_experiment

__all__ = ["ARTEFACTS", "Experiment", "ExperimentConfig", "load_config", "parse_config", "run_experiment"]
