"""``max_cost``: stop before a request would take an embedder's spending past a budget."""

from __future__ import annotations

import threading
from typing import Any

from ..errors import BudgetExceededError


class Budget:
    """Spending so far plus the estimates of requests in flight, against ``max_cost`` (USD).

    A request reserves its estimate before it leaves and settles with what it was billed,
    so concurrent requests cannot overshoot together. ``max_cost=None``: no limit.
    """

    def __init__(self, max_cost: float | None) -> None:
        self.max_cost = max_cost
        self.committed = 0.0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"max_cost": self.max_cost, "committed": self.committed}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_cost"])  # type: ignore[misc]
        self.committed = state["committed"]

    def reserve(self, estimate: float) -> None:
        if self.max_cost is None:
            return
        with self._lock:
            if self.committed + estimate > self.max_cost + 1e-12:
                msg = (
                    f"stopped before spending more than max_cost=${self.max_cost:g} "
                    f"(${self.committed:.6f} spent); finished work is cached, rerun with a "
                    f"higher --max-cost to go on"
                )
                raise BudgetExceededError(msg)
            self.committed += estimate

    def settle(self, estimate: float, actual: float) -> None:
        if self.max_cost is None:
            return
        with self._lock:
            self.committed += actual - estimate


class Budgets:
    """Several budgets reserved and settled together: a call's own (a proxy key's, a run's in
    Redis) and the embedder's. A reservation one refuses is given back to the others."""

    def __init__(self, *budgets: Any) -> None:
        self.budgets = [b for b in budgets if b is not None]
        #: a limit in any: requests are then counted before they leave (their estimate is reserved)
        self.max_cost = 0.0 if any(b.max_cost is not None for b in self.budgets) else None

    def reserve(self, estimate: float) -> None:
        for n, budget in enumerate(self.budgets):
            try:
                budget.reserve(estimate)
            except BaseException:
                for done in self.budgets[:n]:
                    done.settle(estimate, 0.0)
                raise

    def settle(self, estimate: float, actual: float) -> None:
        for budget in self.budgets:
            budget.settle(estimate, actual)
