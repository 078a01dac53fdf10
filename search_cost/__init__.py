"""The search side: a differentiable latency cost over a search space, and the DMasking search."""

from search_cost.cost import LatencyCost

__all__ = ["LatencyCost"]
