"""The run directory: the one owner of its contract (DESIGN.md's "Outputs of a run").

Every path of a run dir is named here, every file of it is written through here (through a
temporary name and a rename, so a reader never sees half a file and a kill mid-write leaves the
previous one whole), and every reader, online and offline, reads through here, tolerantly: a run
killed mid-append leaves a torn last line of ``csv/metrics.csv`` or ``events.jsonl``, which is
dropped, and a file that is not there yet reads as empty (a run still training, or killed).

::

    <run dir>/
      .hydra/config.yaml       the resolved config   .hydra/overrides.yaml   the command line's
      summary.json             final metrics, jumps, versions (:meth:`RunDir.write_summary`)
      events.jsonl             one line per confirmed jump
      transitions.json         per capability rise: onset, midpoint, width (when written)
      csv/metrics.csv          every logged series, one row per logging step (sparse cells)
      checkpoints/last.ckpt    resumable; checkpoints/step-<n>.ckpt: the trail (weights only)
      model.json vocabulary.json tokenizer.json probes.npz   the model without the lab's config
      llc/traces.jsonl         the LLC's chains        retro/   what elab-retro measured
      .lock                    the pid of the process training there
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

SUMMARY, EVENTS, TRANSITIONS = "summary.json", "events.jsonl", "transitions.json"
METRICS_CSV = "csv/metrics.csv"
MODEL, VOCABULARY, TOKENIZER, PROBES = "model.json", "vocabulary.json", "tokenizer.json", "probes.npz"
TRAIL_NAME = re.compile(r"^step-(\d+)\.ckpt$")


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths -------------------------------------------------------------------------------

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_CSV

    @property
    def hydra_dir(self) -> Path:
        return self.path / ".hydra"

    @property
    def config_path(self) -> Path:
        return self.hydra_dir / "config.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints_dir / "last.ckpt"

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    @property
    def retro_dir(self) -> Path:
        return self.path / "retro"

    @property
    def llc_traces_path(self) -> Path:
        return self.path / "llc" / "traces.jsonl"

    def is_run(self) -> bool:
        """Whether the dir holds any trace of a run (a summary, a metrics file, a config)."""
        return (self.summary_path.is_file() or self.find_metrics_csv() is not None
                or self.hydra_dir.is_dir())

    # -- writing -----------------------------------------------------------------------------

    def write_text(self, name: str | Path, text: str) -> Path:
        """``name`` (relative to the run dir) written through a unique temporary name and
        renamed: data-parallel ranks may write the same file at once."""
        path = self.path / name
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        return path

    def write_json(self, name: str | Path, payload: Any) -> Path:
        return self.write_text(name, json.dumps(payload, indent=2, default=str) + "\n")

    def write_summary(self, summary: dict[str, Any]) -> Path:
        return self.write_json(SUMMARY, summary)

    def write_transitions(self, report: dict[str, Any], name: str | Path = TRANSITIONS) -> Path:
        """``transitions.json`` (or ``retro/transitions.json``): the capability fits of
        :mod:`trainer.measures.transitions`. On disk each series' fit is a top-level key (series
        names hold a ``/``; the report's own fields do not), so ``d["probe/icl/acc"]["rises"]``
        reads it without the lab; :meth:`read_transitions` gives the report back."""
        flat = {k: v for k, v in report.items() if k != "series"}
        return self.write_json(name, {**flat, **report.get("series", {})})

    def start_events(self, events: list[dict[str, Any]]) -> None:
        """``events.jsonl`` holding exactly ``events`` (a resume rewrites it from the detector's
        checkpointed state, so events after the checkpoint are not listed twice)."""
        self.write_text(EVENTS, "".join(json.dumps(e) + "\n" for e in events))

    def append_events(self, events: list[dict[str, Any]]) -> None:
        with self.events_path.open("a") as f:
            f.writelines(json.dumps(e) + "\n" for e in events)

    # -- reading -----------------------------------------------------------------------------

    def read_json(self, name: str | Path) -> Any:
        """The JSON at ``name``; None when the file is not there. Invalid JSON is a ValueError
        naming the file."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc

    def read_summary(self) -> dict[str, Any] | None:
        return self.read_json(SUMMARY)

    def read_overrides(self) -> list[str]:
        """The job's command-line overrides (``.hydra/overrides.yaml``, a YAML list of strings);
        empty when the file is absent or not YAML."""
        path = self.hydra_dir / "overrides.yaml"
        if not path.is_file():
            return []
        import yaml

        try:
            return [str(o) for o in yaml.safe_load(path.read_text()) or []]
        except yaml.YAMLError:
            return []

    def read_transitions(self, name: str | Path = TRANSITIONS) -> dict[str, Any] | None:
        """The report :meth:`write_transitions` wrote: its fields and ``series`` (name -> fit)."""
        raw = self.read_json(name)
        if not isinstance(raw, dict):
            return raw
        return {**{k: v for k, v in raw.items() if "/" not in k},
                "series": {k: v for k, v in raw.items() if "/" in k}}

    def read_events(self, name: str | Path = EVENTS) -> list[dict[str, Any]]:
        """The events of ``events.jsonl`` (empty when there is none). A torn last line is
        skipped; a broken line elsewhere is a ValueError naming it."""
        return read_jsonl(self.path / name)

    def find_metrics_csv(self) -> Path | None:
        """``csv/metrics.csv``; a plain CSVLogger nests it as ``csv/.../version_N/``, latest wins."""
        if self.metrics_path.is_file():
            return self.metrics_path
        nested = sorted((self.path / "csv").glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
        return nested[-1] if nested else None

    def read_metrics(self, name: str | Path | None = None) -> tuple[list[str], list[dict[str, str]]]:
        """The header and whole rows of a metrics table (``csv/metrics.csv`` by default; empty
        when there is none): see :func:`read_metrics_csv`."""
        path = self.find_metrics_csv() if name is None else self.path / name
        if path is None or not path.is_file():
            return [], []
        return read_metrics_csv(path)

    # -- checkpoints -------------------------------------------------------------------------

    def trail(self) -> dict[int, Path]:
        """The trail checkpoints by global step (``last.ckpt`` is not part of the trail)."""
        return trail_steps(self.checkpoints_dir)


def trail_steps(dirpath: str | Path) -> dict[int, Path]:
    """The trail checkpoints (``step-<n>.ckpt``) in ``dirpath`` by step."""
    found = {}
    for path in Path(dirpath).glob("step-*.ckpt"):
        match = TRAIL_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One JSON object per line; a torn last line (a kill mid-append) is skipped, a broken line
    elsewhere is a ValueError naming it."""
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: {exc}") from exc
    return records


def write_metrics_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    """A metrics table through a unique temporary name and a rename: a kill mid-write leaves the
    old file whole, and two writers never share a temporary file."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(out.getvalue(), encoding="utf-8", newline="")
    os.replace(tmp, path)
    return path


def read_metrics_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and whole rows of a metrics.csv. A process killed while appending leaves a
    last line without its line end (a torn row): it is dropped, as is any row whose step is not
    an integer, so a killed run can always be resumed and read."""
    text = path.read_text(errors="replace")
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = []
    for row in reader:
        if None in row or any(v is None for v in row.values()):
            continue
        try:
            int(row.get("step") or "")
        except ValueError:
            continue
        rows.append(row)
    return header, rows


def read_metrics_header(path: Path) -> list[str]:
    """The columns of a metrics.csv, without reading its rows."""
    with path.open(newline="", errors="replace") as f:
        return next(csv.reader(f), [])


def series_of(rows: list[dict[str, str]]) -> dict[str, dict[int, float]]:
    """Each column's cells by step (rows are sparse: a series is logged at some steps only); a
    step logged twice (a resumed run re-logs from its checkpoint) keeps the later value."""
    by_step: dict[str, dict[int, float]] = {}
    for row in rows:
        step = int(float(row["step"]))
        for name, cell in row.items():
            if name != "step" and cell not in ("", None):
                by_step.setdefault(name, {})[step] = float(cell)
    return by_step
