"""Tasks: data + model + loss, partitioned across clients (see :mod:`fedsim.tasks.registry`)."""

from fedsim.tasks.base import Objective, Task

__all__ = ["Objective", "Task"]
