"""The data's knobs (each sampler's, the text sources') and the curricula's.

Defaults live in ``conf/data/*.yaml`` and ``conf/curriculum/*.yaml``. Types are checked here before
anything is built; each range is checked by the sampler itself, whose message names the key and
the values it depends on (a fragment length against ``seq_len``, a domain against the store's).
"""

from __future__ import annotations

from trainer.schema.knob import (
    Knob,
    any_of,
    choice,
    documented,
    flag,
    integer,
    knob,
    listed,
    number,
    text,
)

_BC = "data.BurstyClasses."
_MA = "data.ModularArithmetic."
_CO = "data.Composition."
_TM = "data.TextMixer."
_WORLD = "data.TextMixer.source.world."
_HF = "data.TextMixer.source.hf."
_NAME_OR_ID = (str, int, type(None))


def _d(key: str, spec, help_: str) -> Knob:
    return knob(key, documented(spec), help_)


DATA_KNOBS: tuple[Knob, ...] = (
    _d(_BC + "item_mode", choice("token", "vector"),
       "token: a class is a token; vector: a Gaussian class mean (Reddy 2024)"),
    _d(_BC + "n_classes", integer(1), "classes training draws from (curriculum-schedulable)"),
    _d(_BC + "n_labels", integer(2), "label tokens; chance accuracy is 1 / n_labels"),
    _d(_BC + "pairs_per_seq", integer(1),
       "(item, label) pairs before the query: seq_len = 2 x pairs_per_seq + 1"),
    _d(_BC + "p_bursty", number(0, 1),
       "P(context = few classes incl. the query's) vs iid classes (schedulable)"),
    _d(_BC + "copies_per_class", integer(1),
       "copies of each class in a bursty context; must divide pairs_per_seq"),
    _d(_BC + "zipf_exponent", number(0),
       "class frequency ~ (rank + 1) ** -zipf_exponent; 0 = uniform (schedulable)"),
    _d(_BC + "label_mapping_diversity", integer(-1),
       "1: one fixed class -> label map; M: M random maps; 0 or -1: fresh per sequence (schedulable)"),
    _d(_BC + "loss_on", choice("query", "all_labels"),
       "query: loss on the query's label only; all_labels: on every label position"),
    _d(_BC + "n_heldout_classes", integer(0),
       "extra classes training never shows; > 0 adds the icl_heldout probe"),
    _d(_BC + "exemplars_per_class", integer(1),
       "token mode: distinct tokens per class (within-class variation)"),
    _d(_BC + "within_class_noise", number(0),
       "vector mode: exemplar noise eps relative to the class mean (schedulable)"),
    _d(_BC + "item_dim", integer(1), "vector mode: dimension of the item vectors"),
    _d(_BC + "probe_size", integer(1), "rows in each probe set (icl, iwl, icl_heldout)"),
    _d(_MA + "p", integer(2), "the modulus (a prime: every b has an inverse for div)"),
    _d(_MA + "operation", choice("add", "sub", "mul", "div"), "the operation learned"),
    _d(_MA + "train_fraction", number(0, 1),
       "share of all (a, b) pairs seen in training; the rest is the probe"),
    _d(_MA + "probe_size", integer(1), "rows of the probe set"),
    _d(_CO + "entities", integer(2), "entities of the knowledge graph"),
    _d(_CO + "relations", integer(1), "relations of the knowledge graph"),
    _d(_CO + "out_degree", integer(1), "distinct outgoing relations per entity (at most relations)"),
    _d(_CO + "phi", number(0), "training inferred facts / atomic facts: the density of bridges"),
    _d(_CO + "ood_fraction", number(0, 1),
       "atomic facts never used inside a training inferred fact (the OOD test's hops)"),
    _d(_CO + "heldout_inferred", integer(0),
       "in-distribution inferred facts held out of training: the composition_id probe"),
    _d(_CO + "probe_size", integer(1), "rows per probe set"),
    _d(_TM + "seq_len", integer(2), "tokens per training window"),
    _d(_TM + "tokenizer.kind", choice("byte", "bpe"), "byte-level, or a BPE trained and cached"),
    _d(_TM + "tokenizer.vocab_size", integer(300, 65536), "the BPE's vocabulary"),
    _d(_TM + "domains", listed("names or ids of domains", null=True),
       "the domains in play (null: all, or n_domains_active)"),
    _d(_TM + "n_domains_active", integer(1, null=True), "the first n domains are in play"),
    _d(_TM + "domain_weights", listed("one number >= 0 per domain", null=True),
       "explicit mixture weights; else zipf_exponent; else domain sizes in tokens"),
    _d(_TM + "zipf_exponent", number(0, null=True), "weight of the k-th active domain ~ 1/k^s"),
    _d(_TM + "temperature", number(above=0), "p ~ w^(1/temperature): large flattens towards uniform"),
    _d(_TM + "focus_domain", any_of(_NAME_OR_ID, "a domain name or id, or null"),
       "a domain that gets exactly focus_share of the draws"),
    _d(_TM + "focus_share", number(0, 1, null=True),
       "0 leaves the focus domain out, 1 emits only it (a curriculum can move it)"),
    _d(_TM + "fragment_length", integer(0, null=True),
       "null/0: whole documents; n: random spans of n tokens (at most seq_len)"),
    _d(_TM + "docs_per_window", integer(1, null=True),
       "null: pack pieces back to back; k: k equal slots per window"),
    _d(_TM + "weights_count", choice("documents", "rows"),
       "documents: mix then pack; rows: pack then mix (one domain a row)"),
    _d(_TM + "unique_tokens", integer(1, null=True),
       "null: the whole store; n: a pool of n tokens (pool_epochs = budget / n)"),
    _d(_TM + "heldout_docs_per_domain", integer(0),
       "per domain, documents never trained on: the probe/heldout/<domain>/loss sets"),
    _d(_TM + "verify", flag(), "re-hash the token store's files on opening (else size + mtime decide)"),
    _d(_WORLD + "kind", choice("world"), "the synthetic knowledge world (no download)"),
    _d(_WORLD + "n_domains", integer(1), "domains of the world"),
    _d(_WORLD + "entities_per_domain", integer(1), "entities per domain"),
    _d(_WORLD + "relations_per_entity", integer(0), "relations from each entity"),
    _d(_WORLD + "bridge_density", number(0, 1), "chance that a relation crosses into another domain"),
    _d(_WORLD + "template_pool_size", integer(1, 80), "paraphrase templates per fact kind"),
    _d(_WORLD + "values_per_domain", integer(1), "attribute values per domain"),
    _d(_WORLD + "descriptions_per_entity", integer(1),
       "descriptions of each entity, each freshly templated (multiM)"),
    _d(_WORLD + "permute_sentences", flag(), "a fresh sentence order per description"),
    _d(_WORLD + "fullname", flag(), "the name in every sentence (false: 'it' after the first)"),
    _d(_WORLD + "n_attributes", integer(1, 6),
       "attributes per entity (the first n of color, size, home, food, job, pet)"),
    _d(_WORLD + "stories_per_entity", integer(0), "stories per entity"),
    _d(_WORLD + "holdout_fraction", number(0, 1),
       "entities whose Q/A documents are held out as probes"),
    _d(_WORLD + "qa_domain", flag(), "Q/A documents in a domain of their own, 'qa' (see focus_*)"),
    _d(_WORLD + "probe_size", integer(1), "questions per probe set"),
    _d(_HF + "kind", choice("hf"), "a Hugging Face datasets source"),
    _d(_HF + "path", text("a hub name or builder (json, parquet, csv, text)", null=True),
       "the dataset; inferred for files"),
    _d(_HF + "name", text(null=True), "the dataset's configuration name"),
    _d(_HF + "data_files", any_of((str, list, type(None)), "a path, a list of paths, or null"),
       "local files (one domain per file unless domain_column)"),
    _d(_HF + "split", text(), "the split read"),
    _d(_HF + "text_column", text(), "the column holding the text"),
    _d(_HF + "domain_column", text(null=True), "the column holding the domain label"),
    _d(_HF + "streaming", flag(), "stream the dataset instead of downloading it whole"),
    _d(_HF + "max_documents", integer(1, null=True), "cap on documents entering the token store"),
)

CURRICULUM_KNOBS: tuple[Knob, ...] = (
    _d("curriculum.Stages.stages", listed("mappings {until: fraction, <knob>: value, ...}"),
       "piecewise-constant stages, looked up by the fraction of the budget"),
    _d("curriculum.Ramp.knobs", any_of((dict,), "a mapping knob -> {start, end}"),
       "knobs moving from a start to an end value"),
    _d("curriculum.Ramp.shape", choice("linear", "cosine"), "how the knobs move"),
    _d("curriculum.Ramp.start_frac", number(0, 1), "fraction of the budget where the ramp starts"),
    _d("curriculum.Ramp.end_frac", number(0, 1), "fraction of the budget where the ramp ends"),
)
