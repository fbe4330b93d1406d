"""What a run dir keeps beside its checkpoints so the model can be used without the lab's config.

Written once per run (by ``train``), read by ``elab-sample`` and ``elab-export``:

``model.json``        the model class and every ``GPTConfig`` field (vocab_size, max_seq_len...)
``vocabulary.json``   what the ids mean: a text tokenizer (``byte`` or ``bpe``) or, for the
                      synthetic tasks, a name per id (labels, items, digits, operators)
``tokenizer.json``    text runs: the tokenizer in the Hugging Face ``tokenizers`` format. For a
                      BPE this is the trained file itself (otherwise only in a cache keyed by a
                      hash); for the byte tokenizer an equivalent one (ids 0..255 = bytes,
                      256 = ``<|eos|>``), so any tool that reads tokenizer.json reads both
``probes.npz``        the first rows of each answer probe set, for ``elab-sample --probe``

A model is rebuilt from these and a checkpoint's state dict alone (:func:`load_model`); the model
class is looked up among the lab's models, never imported by a name a file supplies, and the
checkpoint is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import ConfigError
from trainer.run_dir import MODEL, PROBES, TOKENIZER, VOCABULARY, RunDir

MODEL_FILE, VOCAB_FILE, TOKENIZER_FILE, PROBES_FILE = MODEL, VOCABULARY, TOKENIZER, PROBES
FORMAT = 1
PROBE_ROWS = 64  # rows kept per probe set: enough to look at, small even with item vectors


def write_run_files(run_dir: str | os.PathLike, sampler: Any, model: Any) -> None:
    """Write model.json, vocabulary.json, tokenizer.json (text runs) and probes.npz into
    ``run_dir``; ``sampler`` is prepared (its tokenizer built)."""
    run = RunDir(run_dir)
    run_dir = run.path
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"format": FORMAT, "class": type(model).__name__,
            "config": dataclasses.asdict(model.config)}
    run.write_text(MODEL_FILE, json.dumps(spec, indent=2) + "\n")
    vocabulary = describe_vocabulary(sampler)
    run.write_text(VOCAB_FILE, json.dumps(vocabulary, indent=2) + "\n")
    tokenizer = getattr(sampler, "tokenizer", None)
    if vocabulary["kind"] == "bpe":
        run.write_text(TOKENIZER_FILE, tokenizer.to_json())
    elif vocabulary["kind"] == "byte":
        run.write_text(TOKENIZER_FILE, byte_tokenizer_json())
    probes = _probe_arrays(sampler)
    if probes:
        tmp = run_dir / f".{PROBES_FILE}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, **probes)
        os.replace(tmp, run_dir / PROBES_FILE)


def describe_vocabulary(sampler: Any) -> dict[str, Any]:
    """What each id means, from the sampler's public attributes."""
    vocab_size = int(sampler.vocab_size)
    tokenizer = getattr(sampler, "tokenizer", None)
    if tokenizer is not None:
        return {"kind": tokenizer.kind, "vocab_size": vocab_size, "eos_id": int(tokenizer.eos_id),
                "eos_text": "<|eos|>", "tokenizer_file": TOKENIZER_FILE}
    task = type(sampler).__name__
    if task == "BurstyClasses":
        names = [f"L{k}" for k in range(sampler.n_labels)]
        if sampler.item_mode == "vector":
            names.append("<item>")
            layout = ("L<k>: label k; <item>: placeholder where an item vector is fed "
                      f"(item_dim={sampler.item_dim})")
        else:
            per = sampler.exemplars_per_class
            names += [f"c{i // per}" if per == 1 else f"c{i // per}.{i % per}"
                      for i in range(vocab_size - sampler.n_labels)]
            layout = "L<k>: label k; c<class>[.<exemplar>]: an item of that class"
        return {"kind": "symbols", "task": "bursty_classes", "vocab_size": vocab_size,
                "names": names, "layout": layout + "; a row is item label ... item label query"}
    if task == "ModularArithmetic":
        symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}[sampler.operation]
        names = [str(i) for i in range(sampler.p)] + [symbol, "="]
        return {"kind": "symbols", "task": "modular_arithmetic", "vocab_size": vocab_size,
                "names": names, "layout": f"a {symbol} b = c (mod {sampler.p})"}
    if task == "Composition":
        names = ([f"e{i}" for i in range(sampler.entities)]
                 + [f"r{i}" for i in range(sampler.relations)] + ["<pad>"])
        return {"kind": "symbols", "task": "composition", "vocab_size": vocab_size, "names": names,
                "layout": "e<h> r<r> <pad> -> e<t> (atomic fact); e<h> r<r1> r<r2> -> e<t2> "
                          "(two-hop fact): the answer follows the last relation"}
    return {"kind": "ids", "task": task, "vocab_size": vocab_size}


def byte_tokenizer_json() -> str:
    """The byte tokenizer as a ``tokenizers`` file: byte-level symbols, no merges, so every
    UTF-8 byte is its own id, and ``<|eos|>`` is 256 (``data_mixers.tokenizer.ByteTokenizer``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = _bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|eos|>", special=True)])
    return tok.to_str()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte (what the ByteLevel pre-tokenizer emits)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _probe_arrays(sampler: Any) -> dict[str, np.ndarray]:
    """The first rows of every answer probe set, keyed ``<name>/<array>``; none when the
    sampler cannot build its probes in this configuration (a run without probe callbacks may
    still train, e.g. with a window shorter than the questions)."""
    from data_mixers.base import DataConfigError

    try:
        probes = sampler.probe_sets()
    except DataConfigError:
        return {}
    out = {}
    for probe in probes:
        if probe.kind != "answer" or probe.answer_positions is None:
            continue
        rows = slice(0, PROBE_ROWS)
        out[f"{probe.name}/answer_positions"] = np.asarray(probe.answer_positions[rows])
        for key in ("input_ids", "targets", "item_vectors", "item_mask"):
            if key in probe.batch:
                out[f"{probe.name}/{key}"] = np.asarray(probe.batch[key][rows])
    return out


def tokenizer_path(run_dir: str | os.PathLike, vocabulary: dict[str, Any]) -> Path:
    """The tokenizer file ``vocabulary.json`` names, inside the run dir."""
    name = vocabulary.get("tokenizer_file", TOKENIZER_FILE)
    if not isinstance(name, str):
        raise ConfigError(f"{Path(run_dir) / VOCAB_FILE}: tokenizer_file={name!r} is not a file name")
    return run_file(run_dir, name, f"{Path(run_dir) / VOCAB_FILE}: tokenizer_file")


# -- reading --------------------------------------------------------------------------------


def run_file(run_dir: str | os.PathLike, name: str, key: str) -> Path:
    """``run_dir/name``, refused (ConfigError naming ``key``) unless it resolves inside the run
    dir, symlinks followed: a name read from a run file must not reach any other file."""
    root = Path(run_dir).resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{key}={name!r} points outside the run dir {root} (to {path}); refusing "
                          "to read it. A run dir's files stay inside it: restore the run's own "
                          "files, or do not trust this run dir")
    return path


def read_json(run_dir: str | os.PathLike, name: str) -> dict[str, Any]:
    path = run_file(run_dir, name, str(Path(run_dir) / name))
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the run dir was written by an older version or is "
                          "not a run dir (model.json and vocabulary.json sit beside checkpoints/)")
    try:
        spec = json.loads(path.read_text())
    except (ValueError, OSError) as exc:  # torn by a killed write, or not text
        raise ConfigError(f"{path} cannot be read ({exc}): a torn or edited file; the run that "
                          "wrote it rewrites it when resumed (elab-train ckpt_path=last)") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{path} holds a {type(spec).__name__} where a mapping belongs "
                          "(an edited or foreign file)")
    return spec


def read_probes(run_dir: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """The stored probe rows by probe name (empty when the run has none)."""
    path = run_file(run_dir, PROBES_FILE, str(Path(run_dir) / PROBES_FILE))
    if not path.is_file():
        return {}
    probes: dict[str, dict[str, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                name, array = key.rsplit("/", 1)
                probes.setdefault(name, {})[array] = data[key]
    except Exception as exc:  # torn, not an npz, object arrays (a pickle), keys not <set>/<array>
        raise ConfigError(f"{path} cannot be read as the run's probe rows ({type(exc).__name__}: "
                          f"{exc}); give a prompt instead of --probe") from None
    return probes


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint read weights-only (data, never code), or a ConfigError that names the file
    and says what is wrong with it: empty or truncated (a run killed while writing it), not a
    checkpoint, or holding objects a weights-only load refuses. FileNotFoundError passes
    through (the trail thins while a run trains: callers may skip a vanished file)."""
    import torch

    path = Path(path)
    size = path.stat().st_size
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=size > 0)
    except FileNotFoundError:
        raise
    except Exception as exc:
        if size == 0 or "zip archive" in str(exc) or isinstance(exc, EOFError):
            what = "is empty (0 bytes)" if size == 0 else f"is truncated ({size} bytes)"
            raise ConfigError(f"checkpoint {path} {what}: a run killed while writing it? Delete "
                              "it and use another checkpoint of checkpoints/ (resume: "
                              "ckpt_path=<that file>)") from None
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ConfigError(f"cannot load checkpoint {path}: not a weights-only checkpoint of this "
                          f"lab (nothing in it was run): {type(exc).__name__}: {first_line}") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ConfigError(f"cannot load checkpoint {path}: it holds no state_dict (not a "
                          "checkpoint of this lab)")
    return ckpt


def checkpoint_trail(run_dir: str | os.PathLike) -> list[Path]:
    """``checkpoints/step-<n>.ckpt`` by step, then ``last.ckpt`` when it exists."""
    run = RunDir(run_dir)
    paths = list(run.trail().values())
    if run.last_checkpoint.is_file():
        paths.append(run.last_checkpoint)
    return paths


def find_checkpoint(run_dir: str | os.PathLike, choice: str | None = None) -> Path:
    """The checkpoint ``--checkpoint`` names: ``last`` (default), a step number, a file name in
    ``checkpoints/`` or a path."""
    run = RunDir(run_dir)
    run_dir, checkpoints = run.path, run.checkpoints_dir
    choice = choice or "last"
    candidates = [checkpoints / f"{choice}.ckpt", checkpoints / f"step-{choice}.ckpt",
                  checkpoints / choice, Path(choice)]
    for path in candidates:
        if path.is_file():
            return path
    names = [p.name for p in checkpoint_trail(run_dir)]
    raise ConfigError(f"--checkpoint={choice!r}: no such checkpoint in {checkpoints} "
                      f"(there: {', '.join(names) or 'none'})")


def load_model(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None):
    """The model of ``run_dir`` with the weights of ``checkpoint`` (see :func:`find_checkpoint`),
    in eval mode on the CPU. Returns ``(model, step)``: ``step`` is the checkpoint's global step."""
    import trainer.models as models

    spec = read_json(run_dir, MODEL_FILE)
    if spec.get("format") != FORMAT or spec.get("class") not in models.__all__:
        raise ConfigError(f"{Path(run_dir) / MODEL_FILE}: class={spec.get('class')!r}, "
                          f"format={spec.get('format')!r}: expected one of {models.__all__}, "
                          f"format {FORMAT}")
    try:
        model = getattr(models, spec["class"])(**spec["config"])
    except (TypeError, ValueError) as exc:  # an edited or foreign config: name the file
        raise ConfigError(f"{Path(run_dir) / MODEL_FILE}: its config does not build a "
                          f"{spec['class']}: {exc}") from None
    path = find_checkpoint(run_dir, None if checkpoint is None else str(checkpoint))
    ckpt = load_checkpoint(path)
    try:
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()
                 if k.startswith("model.")}
        model.load_state_dict(state)
    except Exception as exc:  # weights not this model's: say which file
        raise ConfigError(f"cannot load {path} into the model of {run_dir}: {exc}") from exc
    return model.eval(), int(ckpt.get("global_step", -1))
