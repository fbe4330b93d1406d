"""Callbacks that watch emergence without disturbing training.

* :class:`CapabilityProbes`  every N steps, the source's fixed probe sets: accuracy *and* the
  log-probability of the right answer (a jump in the first with a smooth second is a metric
  artefact, after Schaeffer et al. 2023), or held-out loss; plus an in-context score.
* :class:`TopologyProbe`     hidden states of fixed points at every layer, attention per head and
  weights: cheap metrics (effective rank, participation ratio, attention entropy and
  prefix-matching, weight norms and update ratios) on a fine schedule, expensive ones (TwoNN, kNN
  graph, H0, H1) on a log-spaced schedule plus bursts around candidate jumps.
* :class:`DataMeter`         what the mixer really emitted (``data/...``) and the curriculum's knobs
  (``curriculum/...``).
* :class:`JumpWatch`         an online jump detector over every series the others report; events
  go to ``events.jsonl``, the loggers and ``summary.json`` (with the lead-lag of
  :mod:`trainer.measures.leadlag`).

The entry point builds one :class:`MonitorBus` per run and attaches every monitor to it: they
publish their series there and subscribe to what they need (:mod:`trainer.monitors.bus`).

They run on rank 0 only, on fixed points (never the training loader), in eval mode under
``torch.no_grad`` and a forked RNG, and restore train mode afterwards. A metric that comes out NaN
is reported in the log and ``summary.json`` (``invalid_metrics``), never logged as a number. Each
counts its own wall time (``summary.json``'s ``monitor_seconds``), and each checkpoints what it
needs for a resumed run to log exactly the series of an uninterrupted one.
"""

from trainer.monitors.bus import MonitorBus
from trainer.monitors.data_meter import DataMeter
from trainer.monitors.jumpwatch import JumpWatch
from trainer.monitors.probes import CapabilityProbes, score_probe
from trainer.monitors.topology_probe import TopologyProbe

__all__ = ["CapabilityProbes", "DataMeter", "JumpWatch", "MonitorBus", "TopologyProbe", "score_probe"]
