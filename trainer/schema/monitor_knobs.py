"""The monitors' knobs (``callbacks.*``), keyed by class: ``callbacks.JumpWatch.min_history`` is
the ``min_history`` of every callbacks entry built from ``JumpWatch`` (``callbacks.jumps`` in
``conf/callbacks/default.yaml``, where the defaults live).

The monitors check their settings through these rows (:func:`trainer.schema.check_settings`), so
a value refused at construction and one refused before training read the same.
"""

from __future__ import annotations

from trainer.schema.knob import Knob, any_of, flag, integer, knob, listed, number

_JW = "callbacks.JumpWatch."
_CP = "callbacks.CapabilityProbes."
_TP = "callbacks.TopologyProbe."
_DM = "callbacks.DataMeter."
_TR = "callbacks.CheckpointTrail."
_LLC = "callbacks.LLCMonitor."

MONITOR_KNOBS: tuple[Knob, ...] = (
    knob("callbacks.RunCheckpoint.save_last", flag(), "keep checkpoints/last.ckpt (resume)"),
    knob("callbacks.RunCheckpoint.save_top_k", integer(0), "best checkpoints kept besides last"),
    knob(_TR + "log_per_octave", integer(0), "log-spaced trail checkpoints per doubling of the step (0: none)"),
    knob(_TR + "every_n_steps", integer(0),
         "plus one every so many steps (0: none); the last step always"),
    knob(_TR + "budget_mb", number(above=0), "beyond it the trail is thinned evenly, sparing jumps' onsets"),
    knob(_TR + "protect_window", integer(0), "steps either side of a detected onset that thinning spares"),
    knob(_JW + "min_history", integer(1), "evaluations of a series before a jump can be flagged"),
    knob(_JW + "confirm_evals", integer(1), "values of the new level that must hold (and are averaged)"),
    knob(_JW + "ramp_evals", integer(0),
         "the widest rise, in evaluations, read as one change (a sigmoid's width)"),
    knob(_JW + "transient_evals", integer(0),
         "how many first values may form an early transient, a segment of its own"),
    knob(_JW + "z_confirm", number(above=0), "level shift, in standard errors, that confirms a jump"),
    knob(_JW + "min_rel_size", number(0), "ignore shifts smaller than this fraction of the level"),
    knob(_JW + "topology_min_rel_size", number(0),
         "the same on topo/ series: representation metrics wander by a few percent long after a "
         "run converged (scripts/calibrate_detector.py)"),
    knob(_JW + "companion_window", integer(0, null=True),
         "a topo/ event is reported when a probe/ event's onset lies within so many steps of its "
         "own (null: every event)"),
    knob(_JW + "watch_prefixes", listed("series prefixes"), "the series the detector watches"),
    knob(_CP + "every_n_steps", integer(1), "probe/<set>/<metric> period"),
    knob(_CP + "dense_every_n_steps", integer(1, null=True),
         "also every so many steps up to dense_until_step (null: no dense start)"),
    knob(_CP + "dense_until_step", integer(0), "the end of the dense start"),
    knob(_CP + "max_rows", integer(1),
         "rows scored per probe set (binomial noise ~0.044 at accuracy 0.5 with 128)"),
    knob(_TP + "every_n_steps", integer(1), "topo/ series period (the cheap metrics)"),
    knob(_TP + "n_points", integer(2), "points of the probe cloud, per layer"),
    knob(_TP + "k", integer(1), "neighbours of the kNN graph (below n_points)"),
    knob(_TP + "expensive_per_decade", integer(0),
         "log-spaced evaluations of the expensive metrics (TwoNN, kNN graph, H0) per decade of steps (0: none)"),
    knob(_TP + "burst_steps", integer(0),
         "expensive metrics at every cheap evaluation for this many steps from each new candidate "
         "jump of a watched series (0: no bursts)"),
    knob(_TP + "burst_prefixes", listed("series prefixes"), "the series whose candidate jumps start a burst"),
    knob(_TP + "h1_every_n_steps", integer(1, null=True), "ripser H1 period (null: off)"),
    knob(_TP + "h1_points", integer(2), "points for H1"),
    knob(_TP + "attention", flag(), "attention entropy and induction scores per head"),
    knob(_TP + "weights", flag(), "weight norms and updates per parameter group"),
    knob(_DM + "every_n_steps", integer(1), "data/ and curriculum/ series period"),
    knob(_DM + "window", integer(1), "global batches pooled per evaluation"),
    knob(_LLC + "log_per_octave", integer(0), "LLC estimates per doubling of the step (0: none)"),
    knob(_LLC + "every_n_steps", integer(0), "plus one every so many steps (0: none)"),
    knob(_LLC + "first_step", integer(1), "no estimate before this step"),
    knob(_LLC + "n_batches", integer(1), "fixed training batches the LLC is measured on"),
    knob(_LLC + "batch_size", integer(2), "rows per batch"),
    knob(_LLC + "chains", integer(1), "SGLD chains"),
    knob(_LLC + "steps", integer(8), "SGLD steps per chain"),
    knob(_LLC + "burn_in", integer(0), "first steps of a chain discarded (below steps - 3)"),
    knob(_LLC + "lr", number(above=0), "SGLD step size (calibrate: elab-retro --calibrate-llc)"),
    knob(_LLC + "localization", number(0), "pull towards the measured weights"),
    knob(_LLC + "n_beta", number(above=0, null=True), "inverse temperature x n (null: n / log n)"),
    knob(_LLC + "seed", any_of((int,), "an integer"), "the chains' generator"),
)
