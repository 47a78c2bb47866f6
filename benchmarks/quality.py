"""Model quality benchmark: protocol ml1m-seq v1 (../shared/BENCHMARK.md) and the synthetic logs,
through the real pipeline (``ctr-pipeline run``: SequenceExampleGen, Transform, Trainer, TFMA
Evaluator), every model and ablation, several seeds.

    python benchmarks/quality.py --data-path /path/to/ml-1m-partial [--seeds 0,1,2]
        [--models dnn,din,fadidn,camn,dumn,tf4ctr] [--ablations] [--synthetic] [--no-ml1m]

``--models`` also takes ablation variants by name (``--models tf4ctr_no_tf_loss``), a model in
its paper's exact form where it departs from it (``camn_no_residual``, ``dumn_paper_pooling``,
``dumn_hardest``) and
regularisation variants: ``<model>_noreg`` (``--models dnn_noreg,dumn_noreg``) is the model without
the regularisation every model has by default (TF4CTR's published ML-1M settings, dropout 0.1 and
embedding L2 0.01; docs/models.md "Training defaults (v2)") and ``tf4ctr_half_l2`` TF4CTR with half
its embedding L2. ``din_ref`` and ``dnn_ref`` are the baselines
with exactly FuxiCTR's inputs and networks (benchmarks/peers.md compares them with FuxiCTR), and
``tf4ctr_ref`` TF4CTR on the official TF4CTR's inputs (the 10 non-sequence fields), all three at
the reference schedule (batches of 4,096, up to 10 epochs).
``<model>_v1`` is the model trained with the v1 trainer (fixed learning rate, patience 1, no
clipping, a 10,000-example shuffle buffer, uniform embedding init) instead of the v2 defaults.
``fadidn_l<lambda>_t<tau>[_detach]`` (decimal point dropped: ``fadidn_l005_t05``) is FADIDN with other contrastive settings (the grid of
docs/models.md: lambda 0.01/0.05/0.2, tau 0.1/0.2/0.5, item side detached or not); quality.md ranks
the ones run on ml1m-seq seed 0 by best validation AUC, the choice the design asks for.

Each (dataset, seed, model) is one ``ctr-pipeline run --models <model>`` in a child process:
the data steps are cached by TFX after the first run of a dataset, a new seed retrains. Per run:
test AUC, gAUC, logloss (TFMA, from ML Metadata), training examples/s (wall clock after the first
50 steps, from the Trainer), batch inference examples/s (the exported ``serving_default``
signature: serialized raw tf.Examples of the test split -> probability, batches of 4096, parsing
and the transform graph included) and the run's peak resident memory (the child process).

``--synthetic`` adds the known-answer logs (dataset ``known-answer``, config
``configs/known_answer.yaml``): ``ctr-pipeline generate-data --preset known-answer`` writes them
into ``--synthetic-path`` when it holds no events.csv (5,000 users x 80 events, about 400k events;
a few minutes). Their click depends strongly on the recent same-category/brand clicks with their
time gaps and on recent dislikes, so quality.md reports two ceilings on the test split: the oracle
AUC (the true click probability) and the no-sequence oracle AUC (``click_prob_static``: the click
probability expected without the feedback history, the best a model that reads no sequence can
do, computed from events.csv by ``ingest.synthetic.oracles_on_test_split``). A sequence
model should land between the two, well above the second.

Results are appended to ``<output>/quality.json`` as they come (a re-run skips what is there,
so an interrupted benchmark resumes); ``quality.md`` (mean +- std over seeds, RelaImpr vs DIN)
and ``quality.png`` (AUC per model with error bars)
are rewritten after every run.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import machine  # noqa: E402

import yaml  # noqa: E402

MODELS = ("dnn", "din", "fadidn", "camn", "dumn", "tf4ctr")
# each paper's main modules switched off, one at a time (the switches of the models' Params)
ABLATIONS: Dict[str, dict] = {
    "fadidn_no_contrastive": {"architecture": "fadidn", "contrastive": False},
    "fadidn_no_gate": {"architecture": "fadidn", "gate": False},
    "camn_no_router": {"architecture": "camn", "router": False},
    "camn_no_diversity": {"architecture": "camn", "diversity_loss": False},
    "dumn_no_purification": {"architecture": "dumn", "purification": False},
    "dumn_no_memory": {"architecture": "dumn", "memory": False},
    "dumn_no_triplet": {"architecture": "dumn", "triplet_loss": False},
    "tf4ctr_no_tf_loss": {"architecture": "tf4ctr", "tf_loss": False},
    "tf4ctr_dfm_sum": {"architecture": "tf4ctr", "dfm": "sum"},
    "tf4ctr_ssem_share": {"architecture": "tf4ctr", "ssem": "share"},
}
# where a model departs from its paper's equations, the paper's form (the docstring gives the why):
# CAMN's eq. 5-6 without the residual connections the model adds (models/camn.py point 6), DUMN's
# eq. 3 without the target-interaction block, DUMN's eq. 19 hardest triplet pair instead of every pair
DEVIATION_VARIANTS: Dict[str, dict] = {
    "camn_no_residual": {"architecture": "camn", "residual": False},
    "dumn_paper_pooling": {"architecture": "dumn", "pooling_interaction": False},  # models/dumn.py, eq. 3
    "dumn_hardest": {"architecture": "dumn", "triplet_mining": "hardest"},  # models/dumn.py, eq. 17-19
}
# regularisation: every model's default is TF4CTR's (dropout 0.1, embedding L2 0.01; docs/models.md
# "Training defaults (v2)"); <model>_noreg trains without it (the v1 trainer's 0 and 0), and
# tf4ctr_half_l2 with half the embedding L2 (the authors' code, FuxiCTR, adds 0.01/2 * sum(E^2);
# tf_keras' L2(0.01) adds 0.01 * sum(E^2))
NO_REGULARIZATION = {"dropout": 0.0, "embedding_l2": 0.0}
REGULARIZATION_VARIANTS: Dict[str, dict] = {
    **{f"{m}_noreg": {"architecture": m, **NO_REGULARIZATION} for m in MODELS},
    "tf4ctr_half_l2": {"architecture": "tf4ctr", "embedding_l2": 0.005},
}
# how much of a model's gap to DNN its inputs explain: DNN given only the behaviour sequences
# another model reads (the user, target and context fields stay), and DUMN and FADIDN given the
# context fields (hour, weekday) that the design (docs/models.md) leaves out of them and DNN sees
INPUT_VARIANTS: Dict[str, dict] = {
    "dnn_click": {"architecture": "dnn", "sequences": ["click"]},  # DIN's and CAMN's sequence
    "dnn_click_unclick": {"architecture": "dnn", "sequences": ["click", "unclick"]},  # FADIDN's
    "dumn_context": {"architecture": "dumn", "context": True},
    "fadidn_context": {"architecture": "fadidn", "context": True},
}
# the baselines in their reference form: exactly FuxiCTR's inputs and networks on ml1m-seq
# (../shared/peers/README.md): the click sequence of movie id and first genre, no time gaps, no
# year in the sequence; DNN: MLP 500x3 over the fields and the mean-pooled sequence; DIN: one
# Dice layer of 64 in the activation unit (no softmax), MLP 500x3
REFERENCE_SEQUENCE = {"sequence_fields": ["item_id", "genre"], "sequence_gap": False, "mlp_units": [500, 500, 500]}
REFERENCE_VARIANTS: Dict[str, dict] = {
    "dnn_ref": {"architecture": "dnn", "sequences": ["click"], **REFERENCE_SEQUENCE, **NO_REGULARIZATION},
    "din_ref": {"architecture": "din", "attention_units": [64], "attention_activation": "dice", **REFERENCE_SEQUENCE,
                **NO_REGULARIZATION},
    # the official TF4CTR's inputs on ml1m-seq (peers README): the 10 non-sequence fields, with
    # TF4CTR's defaults (the authors' ML-1M settings: SER + WSF, L2 0.01, dropout 0.1)
    "tf4ctr_ref": {"architecture": "tf4ctr", "sequences": []},
}
# training-schedule variants: the same model, trained under other ``training`` settings (a config
# of their own). ``<model>_v1``: the v1 trainer (before the v2 training defaults of docs/models.md): fixed
# learning rate, stop after one epoch without a gain, no gradient clipping, a 10,000-example
# shuffle buffer and Keras' uniform embedding init
# ``<model>_b4096``: batches of 4,096 for up to 10 epochs, the configs' schedule until commit 56b8de7
# (the rows that ran under it are in benchmarks/results/b4096/; the configs now train at 1,024 x 30)
SCHEDULES: Dict[str, dict] = {"v1": {"reduce_lr_on_plateau": None, "early_stopping_patience": 1,
                                     "gradient_clip_norm": None, "shuffle_buffer_examples": 10000},
                              "b4096": {"batch_size": 4096, "epochs": 10},
                              "fuxictr": {"batch_size": 4096, "epochs": 10}}  # the reference forms' (peers README)
SCHEDULE_OF_VARIANT: Dict[str, str] = {f"{m}_{s}": s for m in MODELS for s in SCHEDULES if s != "fuxictr"}
SCHEDULE_OF_VARIANT.update({name: "fuxictr" for name in REFERENCE_VARIANTS})
SCHEDULE_VARIANTS: Dict[str, dict] = {
    **{f"{m}_v1": {"architecture": m, "embedding_init_std": None, **({} if m == "tf4ctr" else NO_REGULARIZATION)}
       for m in MODELS},
    **{f"{m}_b4096": {"architecture": m} for m in MODELS},
}
# FADIDN's contrastive settings (docs/models.md "FADIDN"): lambda in {0.01, 0.05, 0.2},
# tau in {0.1, 0.2, 0.5}, item side detached or not, chosen by validation AUC on ml1m-seq seed 0.
# ``fadidn_l<lambda>_t<tau>[_detach]`` with the decimal point dropped (model names are [A-Za-z0-9_]:
# fadidn_l005_t02 is lambda 0.05, tau 0.2); plain ``fadidn`` is FADIDNParams' defaults, the choice
# (lambda 0.01, tau 0.2, not detached; the design's starting point was lambda 0.2: fadidn_l02_t02)
CONTRASTIVE_GRID = {"lambda_cl": (0.01, 0.05, 0.2), "tau": (0.1, 0.2, 0.5), "detach_items": (False, True)}
FADIDN_CONTRASTIVE_DEFAULTS = {"lambda_cl": 0.01, "tau": 0.2, "detach_items": False}
CONTRASTIVE_VARIANTS: Dict[str, dict] = {
    f"fadidn_l{str(lam).replace('.', '')}_t{str(tau).replace('.', '')}{'_detach' if detach else ''}": {
        "architecture": "fadidn", "lambda_cl": lam, "tau": tau, "detach_items": detach}
    for lam, tau, detach in itertools.product(*CONTRASTIVE_GRID.values())
    if (lam, tau, detach) != tuple(FADIDN_CONTRASTIVE_DEFAULTS.values())  # plain fadidn
}
INFERENCE_BATCH = 4096


def variant(name: str) -> dict:
    """The ``training.models`` entry of a model, an ablation, a regularisation, an input or a schedule variant."""
    if name in MODELS:
        return {}
    variants = {**ABLATIONS, **DEVIATION_VARIANTS, **REGULARIZATION_VARIANTS, **INPUT_VARIANTS, **REFERENCE_VARIANTS, **SCHEDULE_VARIANTS,
                **CONTRASTIVE_VARIANTS}
    if name not in variants:
        raise ValueError(f"unknown model {name!r}: one of {', '.join([*MODELS, *variants])}")
    return dict(variants[name])


def schedule(name: str) -> str:
    """The SCHEDULES key a schedule variant trains under; "" (the dataset config's own) for the others."""
    return SCHEDULE_OF_VARIANT.get(name, "")


def dataset_config(name: str, base_config: str, data_path: str, workdir: str, seed: int, models: Dict[str, dict],
                   schedule_name: str = "") -> str:
    """Writes the run's YAML config (the dataset's config with the data path, roots, seed and
    models replaced, and the training settings of ``schedule_name`` if given) and returns its path.
    Every config of a dataset shares its pipeline root, so the data steps stay cached."""
    with open(base_config, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw["pipeline_name"] = f"quality-{name}"
    raw["pipeline_root"] = os.path.join(workdir, name, "pipeline")
    raw["serving_root"] = os.path.join(workdir, name, "serving")
    raw["data"]["path"] = os.path.abspath(data_path)
    raw.setdefault("training", {})["seed"] = seed
    raw["training"]["models"] = models
    raw["training"].update(SCHEDULES.get(schedule_name, {}))
    raw.setdefault("evaluation", {})["auc_max_drop"] = 1.0  # every seed is evaluated, none is held back
    raw["evaluation"]["confidence_intervals"] = False  # seeds give the spread; the bootstrap would multiply the Evaluator time
    path = os.path.join(workdir, name, f"config-seed{seed}{'-' + schedule_name if schedule_name else ''}.yaml")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    return path


def run_pipeline(config_path: str, model: str, log_path: str) -> dict:
    """``ctr-pipeline run --models model`` in a child process; its wall time and peak RSS."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", config_path, "--models", model]
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {code}; log: {log_path}")
    return {"run_seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def inference_throughput(model_uri: str, examples_uri: str, split: str = "test") -> float:
    """Examples/s of the exported serving_default signature over a split (batches of 4096)."""
    import tensorflow as tf

    signature = tf.saved_model.load(os.path.join(model_uri, "Format-Serving")).signatures["serving_default"]
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    batches = [b for b in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(INFERENCE_BATCH)]
    signature(examples=batches[0])  # warm-up (first call traces and allocates)
    started, count = time.perf_counter(), 0
    for batch in batches:
        signature(examples=batch)["probability"].numpy()
        count += int(batch.shape[0])
    return count / (time.perf_counter() - started)


def synthetic_oracles(base_config: str, data_path: str) -> dict:
    """The no-sequence oracle AUC of synthetic logs on the test split of ``base_config``'s time
    split, from events.csv (``click_prob_static``; {} for logs written before it existed)."""
    import pandas as pd

    from ingest import synthetic

    with open(base_config, encoding="utf-8") as handle:
        split = yaml.safe_load(handle).get("split", {})
    events = pd.read_csv(os.path.join(data_path, "events.csv"), dtype={"user_id": str, "item_id": str})
    oracles = synthetic.oracles_on_test_split(events, split.get("train", 0.8), split.get("eval", 0.1))
    print(f"[quality] {data_path}: {len(events):,} events, click rate {events['clicked'].mean():.4f}; test split "
          f"({oracles['test_rows']:,} rows): oracle AUC {oracles['oracle_auc']:.4f}, "
          f"no-sequence oracle AUC {oracles.get('no_sequence_oracle_auc', float('nan')):.4f}", flush=True)
    return {"no_sequence_oracle_auc": oracles["no_sequence_oracle_auc"]} if "no_sequence_oracle_auc" in oracles else {}


def run_one(dataset: str, config_path: str, model: str, workdir: str) -> dict:
    from pipeline import report
    from contract.config import load_config

    log_path = os.path.join(workdir, dataset, f"{os.path.basename(config_path)[:-5]}-{model}.log")
    usage = run_pipeline(config_path, model, log_path)
    config = load_config(config_path)
    summary = report.collect(config, [model])
    (row,) = summary["models"]
    row.update(usage)
    row["inference_examples_per_second"] = inference_throughput(row.pop("model_uri"), summary["examples_uri"], config.evaluation.split)
    row["oracle_auc"] = summary["oracle_auc"]
    row["log"] = os.path.relpath(log_path, ROOT)
    return row


# ---- the table -------------------------------------------------------------------------------
def _mean_std(values: List[float]) -> Optional[tuple]:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def summarize(results: List[dict]) -> Dict[str, Dict[str, dict]]:
    """dataset -> model -> metric -> (mean, std, n)."""
    table: Dict[str, Dict[str, dict]] = {}
    for row in results:
        table.setdefault(row["dataset"], {}).setdefault(row["model"], {}).setdefault("_rows", []).append(row)
    for models in table.values():
        for name, entry in models.items():
            rows = entry.pop("_rows")
            for metric in ("auc", "gauc", "logloss", "train_examples_per_second", "inference_examples_per_second", "peak_rss_mb",
                           "oracle_auc", "no_sequence_oracle_auc"):
                entry[metric] = _mean_std([r.get(metric) for r in rows])
            entry["seeds"] = sorted(r["seed"] for r in rows)
    return table


def rela_impr(model_auc: float, din_auc: float) -> float:
    """RelaImpr = (AUC - 0.5) / (AUC_DIN - 0.5) - 1 (protocol step 6)."""
    return (model_auc - 0.5) / (din_auc - 0.5) - 1


def paired_variants(results: List[dict]) -> Dict[str, List[dict]]:
    """dataset -> one entry per variant (ablation, ``_noreg`` or input variant): its mean test AUC and its model's
    on the seeds both ran, so a variant is only ever compared with its model on the same seeds."""
    auc = {(r["dataset"], r["model"], r["seed"]): r["auc"] for r in results}
    pairs: Dict[str, List[dict]] = {}
    for dataset, name in dict.fromkeys((r["dataset"], r["model"]) for r in results):
        if name in MODELS:
            continue
        settings = {**variant(name), **SCHEDULES.get(schedule(name), {})}
        base = settings.pop("architecture")
        seeds = sorted(s for (d, m, s) in auc if d == dataset and m == name and (dataset, base, s) in auc)
        if seeds:
            mean, base_mean = (statistics.fmean(auc[(dataset, m, s)] for s in seeds) for m in (name, base))
            pairs.setdefault(dataset, []).append({
                "variant": name, "model": base, "settings": settings, "seeds": seeds,
                "auc": mean, "model_auc": base_mean, "delta": mean - base_mean,
            })
    return pairs


def contrastive_selection(results: List[dict], seed: int = 0) -> List[dict]:
    """FADIDN's contrastive settings tried on ml1m-seq ``seed``, best validation AUC first (the
    choice the design asks for is the first row; the test AUC is shown, never used to choose).
    The grid ran before regularisation became the default: its rows and ``fadidn_noreg`` (the
    chosen settings, as they then ran) are compared."""
    rows = []
    for row in results:
        if row["dataset"] != "ml1m-seq" or row["seed"] != seed or not row.get("validation_auc_by_epoch"):
            continue
        if row["model"] == "fadidn_noreg" or row["model"] in CONTRASTIVE_VARIANTS:
            settings = {**FADIDN_CONTRASTIVE_DEFAULTS, **CONTRASTIVE_VARIANTS.get(row["model"], {})}
            settings.pop("architecture", None)
            rows.append({"model": row["model"], **settings, "validation_auc": max(row["validation_auc_by_epoch"]),
                         "auc": row["auc"]})
    return sorted(rows, key=lambda r: -r["validation_auc"])


def format_markdown(table: Dict[str, Dict[str, dict]], commands: List[str], meta: dict,
                    pairs: Optional[Dict[str, List[dict]]] = None, selection: Optional[List[dict]] = None) -> str:
    def cell(stat, digits=4, scale=1.0):
        if stat is None:
            return "-"
        mean, std, n = stat
        return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" if n > 1 else f"{mean * scale:.{digits}f}"

    lines = ["# Model quality", "", "Rows from:", ""] + [f"- `{c}`" for c in commands] + [""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    for dataset, models in table.items():
        din = models.get("din", {}).get("auc")
        lines += ["", f"## {dataset}", "",
                  "| model | seeds | test AUC | gAUC | logloss | RelaImpr vs DIN | train ex/s | inference ex/s | peak RSS MB |",
                  "|---|---|---|---|---|---:|---:|---:|---:|"]
        for name, entry in models.items():
            impr = f"{rela_impr(entry['auc'][0], din[0]) * 100:+.2f}%" if din and entry["auc"] else "-"
            lines.append(
                f"| {name} | {','.join(map(str, entry['seeds']))} | {cell(entry['auc'])} | {cell(entry['gauc'])} | "
                f"{cell(entry['logloss'])} | {impr} | {cell(entry['train_examples_per_second'], 0)} | "
                f"{cell(entry['inference_examples_per_second'], 0)} | {cell(entry['peak_rss_mb'], 0)} |"
            )
        oracle = next((e["oracle_auc"] for e in models.values() if e["oracle_auc"]), None)
        if oracle:
            lines.append(f"\nOracle AUC (the true click probability of the synthetic logs): {oracle[0]:.4f}")
        no_sequence = next((e["no_sequence_oracle_auc"] for e in models.values() if e.get("no_sequence_oracle_auc")), None)
        if no_sequence:
            lines.append(f"No-sequence oracle AUC (`click_prob_static`, the click probability expected without the feedback "
                         f"history: the ceiling of a model that reads no sequence, the floor for one that does): {no_sequence[0]:.4f}")
        if (pairs or {}).get(dataset):
            lines += ["", "Variants against their model on the same seeds (test AUC, mean over those seeds):", "",
                      "| variant | setting | seeds | variant AUC | model AUC | variant - model |", "|---|---|---|---|---|---:|"]
            for p in pairs[dataset]:
                setting = ", ".join(f"{k}={v}" for k, v in p["settings"].items())
                lines.append(f"| {p['variant']} | {p['model']}: {setting} | {','.join(map(str, p['seeds']))} | "
                             f"{p['auc']:.4f} | {p['model_auc']:.4f} | {p['delta']:+.4f} |")
    if selection and len(selection) > 1:
        lines += ["", "## FADIDN contrastive settings (ml1m-seq seed 0, best validation AUC first)", "",
                  "| variant | lambda_cl | tau | detach_items | best validation AUC | test AUC |", "|---|---:|---:|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['lambda_cl']} | {r['tau']} | {r['detach_items']} | {r['validation_auc']:.4f} | "
                  f"{r['auc']:.4f} |" for r in selection]
    return "\n".join(lines) + "\n"


def plot(table: Dict[str, Dict[str, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(table), figsize=(6 * len(table), 4), squeeze=False)
    for axis, (dataset, models) in zip(axes[0], table.items()):
        names = [n for n, e in models.items() if e["auc"]]
        means = [models[n]["auc"][0] for n in names]
        stds = [models[n]["auc"][1] for n in names]
        axis.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4c72b0")
        axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
        axis.set_ylim(min(means) - 0.02, max(means) + 0.02)
        axis.set_title(f"{dataset}: test AUC (mean ± std over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def write_outputs(results: List[dict], output: str, command: str, meta: dict) -> None:
    """``command``: this invocation's, for the rows recorded before commands were (which lack one)."""
    table = summarize(results)
    commands = list(dict.fromkeys(r.get("command", command) for r in results))
    with open(os.path.join(output, "quality.md"), "w", encoding="utf-8") as handle:
        handle.write(format_markdown(table, commands, meta, paired_variants(results), contrastive_selection(results)))
    plot(table, os.path.join(output, "quality.png"))


# ---- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", default=None, help="ml-1m-partial directory (ratings*.dat[.gz], users.dat, movies.dat)")
    parser.add_argument("--no-ml1m", action="store_true", help="skip ml1m-seq")
    parser.add_argument("--synthetic", action="store_true",
                        help="also run the known-answer synthetic logs (configs/known_answer.yaml; against the oracle "
                             "and the no-sequence oracle AUC)")
    parser.add_argument("--synthetic-path", default=os.path.join(ROOT, "runs", "quality", "known-answer-logs"),
                        help="known-answer logs (generated there by `ctr-pipeline generate-data --preset known-answer`, "
                             "5,000 users x 80 events, when it holds no events.csv)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated models, ablation variants, <model>_noreg, tf4ctr_half_l2, "
                             "dnn_click, dnn_click_unclick, din_ref, dnn_ref, tf4ctr_ref, camn_no_residual, <model>_v1 or <model>_b4096 (default: the six models)")
    parser.add_argument("--ablations", action="store_true", help=f"also the ablation variants: {', '.join(ABLATIONS)}")
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "quality"))
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    if not args.no_ml1m and not args.data_path:
        parser.error("--data-path is required for ml1m-seq (or pass --no-ml1m)")
    seeds = [int(s) for s in args.seeds.split(",")]
    try:
        models = {m: variant(m) for m in args.models.split(",") if m}
    except ValueError as error:
        parser.error(str(error))
    if args.ablations:
        models.update({name: variant(name) for name, settings in ABLATIONS.items() if settings["architecture"] in models})
    datasets = []
    if not args.no_ml1m:
        datasets.append(("ml1m-seq", os.path.join(ROOT, "configs", "ml1m.yaml"), args.data_path))
    dataset_oracles: Dict[str, dict] = {}  # dataset -> fields added to its rows
    if args.synthetic:
        if not os.path.exists(os.path.join(args.synthetic_path, "events.csv")):
            subprocess.run([sys.executable, "-m", "pipeline.cli", "generate-data", "--preset", "known-answer",
                            "--output", args.synthetic_path], cwd=ROOT, check=True)
        base = os.path.join(ROOT, "configs", "known_answer.yaml")
        datasets.append(("known-answer", base, args.synthetic_path))
        dataset_oracles["known-answer"] = synthetic_oracles(base, args.synthetic_path)

    os.makedirs(args.output, exist_ok=True)
    results_path = os.path.join(args.output, "quality.json")
    results = json.load(open(results_path, encoding="utf-8")) if os.path.exists(results_path) else []
    done = {(r["dataset"], r["seed"], r["model"]) for r in results}
    command = "python benchmarks/quality.py " + " ".join(sys.argv[1:])
    meta = {"machine": machine.describe(), "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    by_schedule: Dict[str, Dict[str, dict]] = {}  # a config per schedule, for its variants
    for model, entry in models.items():
        by_schedule.setdefault(schedule(model), {})[model] = entry
    for (dataset, base, data_path), seed in itertools.product(datasets, seeds):
        for schedule_name, group in by_schedule.items():
            config_path = dataset_config(dataset, base, data_path, args.workdir, seed, group, schedule_name)
            for model in group:
                if (dataset, seed, model) in done:
                    continue
                print(f"[quality] {dataset} seed {seed} {model} ...", flush=True)
                row = {"dataset": dataset, "seed": seed, **run_one(dataset, config_path, model, args.workdir),
                       **dataset_oracles.get(dataset, {}), "command": command}
                print(f"[quality] {dataset} seed {seed} {model}: AUC {row['auc']:.4f} gAUC {row['gauc']:.4f} "
                      f"logloss {row['logloss']:.4f}, train {row['train_examples_per_second'] or 0:,.0f} ex/s, "
                      f"inference {row['inference_examples_per_second']:,.0f} ex/s, peak {row['peak_rss_mb']:,.0f} MB, "
                      f"{row['run_seconds']:.0f}s", flush=True)
                results.append(row)
                with open(results_path, "w", encoding="utf-8") as handle:
                    json.dump(results, handle, indent=2)
                write_outputs(results, args.output, command, meta)
    write_outputs(results, args.output, command, meta)
    print(open(os.path.join(args.output, "quality.md"), encoding="utf-8").read())


if __name__ == "__main__":
    main()
