"""Evaluation and tuning on real embeddings: ``hubless evaluate`` and ``hubless tune``.

- :mod:`~service.evaluation.methods`: the configurations compared and the dataset splits;
- :mod:`~service.evaluation.evaluate`: every configuration on the test split via the core;
- :mod:`~service.evaluation.sweep`: exact re-scoring that shares work across a parameter grid;
- :mod:`~service.evaluation.tune`: the validation-split grid search and its env file;
- :mod:`~service.evaluation.remote`: the same figures from a running service over HTTP;
- :mod:`~service.evaluation.report`: Markdown, JSON and PNG outputs;
- :mod:`~service.evaluation.commands`: the CLI sub-commands.
"""

from service.evaluation.evaluate import Evaluation, Row, Table, beta_curve, evaluate_offline
from service.evaluation.methods import DEFAULT_CONFIGS, Config, Split, parse_configs
from service.evaluation.tune import Grid, TuneResult, tune

__all__ = [
    "DEFAULT_CONFIGS",
    "Config",
    "Evaluation",
    "Grid",
    "Row",
    "Split",
    "Table",
    "TuneResult",
    "beta_curve",
    "evaluate_offline",
    "parse_configs",
    "tune",
]
