"""``max_cost`` for a run whose workers are many: one budget in Redis per run id.

Each worker's requests reserve their estimate before they leave and settle with what was
billed (as ``pipeline.budget.Budget`` does in one process), in one atomic script, so the
whole run never spends past the budget however many workers send at once. A Ray actor that
dies and is started again joins the same budget (it is the run's, not the actor's): the
job stops at the figure the user gave, as the local engine does.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import BudgetExceededError, SharedStateError
from .redis_link import Linked, redis_errors, unreachable

#: Seconds a run's budget is kept after its last request.
KEEP_SECONDS = 7 * 86_400

# KEYS[1]: the run's dollars spent or reserved. ARGV[1]: 'reserve' or 'settle', ARGV[2]: dollars,
# ARGV[3]: the budget. Returns {1 if done, the dollars after}.
_SCRIPT = """
local committed = tonumber(redis.call('GET', KEYS[1])) or 0
if ARGV[1] == 'reserve' and committed + tonumber(ARGV[2]) > tonumber(ARGV[3]) + 1e-12 then
  return {0, tostring(committed)}
end
committed = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return {1, tostring(committed)}
"""


class RedisBudget(Linked):
    """``reserve``/``settle`` of a run's ``max_cost`` in the Redis at ``url``, shared by every
    worker given the same ``run_id`` (it pickles as its settings)."""

    def __init__(self, url: str, run_id: str, max_cost: float, *, prefix: str = "polars-embed") -> None:
        self.url, self.run_id, self.max_cost, self.prefix = url, run_id, float(max_cost), prefix
        self._init_state()

    def _init_state(self) -> None:
        self._client: Any = None
        self._lock = threading.Lock()
        self._script: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "run_id": self.run_id, "max_cost": self.max_cost, "prefix": self.prefix}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    @property
    def key(self) -> str:
        return f"{self.prefix}:budget:{self.run_id}"

    def _run(self, op: str, usd: float) -> tuple[bool, float]:
        try:
            if self._script is None:
                self._script = self.client.register_script(_SCRIPT)
            done, committed = self._script(keys=[self.key], args=[op, repr(float(usd)), repr(self.max_cost),
                                                                     str(KEEP_SECONDS)])
        except redis_errors() as exc:
            raise SharedStateError(unreachable(self.url, exc, "keeping the run's budget (--max-cost)")) from None
        return bool(int(done)), float(committed)

    def reserve(self, estimate: float) -> None:
        done, committed = self._run("reserve", estimate)
        if not done:
            msg = (f"stopped before spending more than max_cost=${self.max_cost:g} (${committed:.6f} spent or in "
                   f"flight across every worker of the run); finished work is cached, rerun with a higher "
                   f"--max-cost to go on")
            raise BudgetExceededError(msg)

    def settle(self, estimate: float, actual: float) -> None:
        if actual != estimate:
            self._run("settle", actual - estimate)

    def spent(self) -> float:
        """Dollars spent (or reserved by requests in flight) by the whole run so far."""
        return self._run("settle", 0.0)[1]
