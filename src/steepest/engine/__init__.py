"""The engine: the Optimizer shell and the containers that run a rule many ways."""

from steepest.engine.optimizer import Optimizer
from steepest.engine.tensorlist import TensorList, add_scaled, maximum_, nonzero

__all__ = ["Optimizer", "TensorList", "add_scaled", "maximum_", "nonzero"]
