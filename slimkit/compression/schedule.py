"""Sparsity schedules, framework-neutral: AGP's cubic ramp and Lottery Ticket's geometric rounds.

Example:

>>> from slimkit.compression.schedule import agp_sparsity, lottery_sparsity
>>> [round(agp_sparsity(t, 0.0, 0.8, start_epoch=0, end_epoch=4), 4) for t in range(6)]
[0.0, 0.4625, 0.7, 0.7875, 0.8, 0.8]
>>> [round(lottery_sparsity(0.75, i, 2), 4) for i in range(3)]
[0.0, 0.5, 0.75]
"""

from __future__ import annotations


def agp_sparsity(epoch: int, initial_sparsity: float, final_sparsity: float, start_epoch: int, end_epoch: int,
                 frequency: int = 1) -> float:
    """Target sparsity at ``epoch`` of Zhu & Gupta's (2017) automated gradual pruning.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` with ``t0 = start_epoch``,
    ``dt = frequency`` and ``n * dt = end_epoch - start_epoch``. Masks are updated only at
    ``t0, t0 + dt, t0 + 2 dt, ...``: between updates the last target holds, before ``t0`` it is
    ``s_i`` and from ``end_epoch`` on it is ``s_f``.

    Args:
        epoch: the current epoch ``t``.
        initial_sparsity: ``s_i``.
        final_sparsity: ``s_f``.
        start_epoch: ``t0``.
        end_epoch: the epoch at which ``s_f`` is reached (``> start_epoch``).
        frequency: ``dt``, epochs between mask updates.

    Returns:
        The target sparsity, a float in ``[s_i, s_f]``.
    """
    if epoch <= start_epoch:
        return float(initial_sparsity)
    if epoch >= end_epoch:
        return float(final_sparsity)
    span = end_epoch - start_epoch
    elapsed = (epoch - start_epoch) // frequency * frequency
    return float(final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - elapsed / span) ** 3)


def lottery_sparsity(final_sparsity: float, round_index: int, rounds: int) -> float:
    """Sparsity after ``round_index`` of ``rounds`` Lottery Ticket rounds (Frankle & Carbin, 2019).

    Each round keeps the same fraction ``(1 - s) ** (1 / n)`` of the surviving weights, so after
    round ``i`` the kept fraction is ``(1 - s) ** (i / n)``; round 0 is the dense network.
    """
    if round_index <= 0:
        return 0.0
    return float(1.0 - (1.0 - final_sparsity) ** (min(round_index, rounds) / rounds))
