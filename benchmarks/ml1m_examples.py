"""Protocol ml1m-seq, steps 1-5: builds the examples with the pipeline's own Beam code and
reports the example count per split, the quarantine and the wall time.

    python benchmarks/ml1m_examples.py --data-path /path/to/ml-1m-partial [--output DIR]

Writes benchmarks/results/ml1m_examples.json.
"""
import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import apache_beam as beam

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from contract.config import load_config  # noqa: E402
from ingest import sequences  # noqa: E402
from contract.feature_spec import FeatureSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-path", required=True, help="directory with ratings*.dat[.gz], users.dat, movies.dat")
    parser.add_argument("--config", default=os.path.join(ROOT, "configs", "ml1m.yaml"))
    parser.add_argument("--output", default=None, help="where to write the examples (default: a temp dir)")
    args = parser.parse_args()
    config = load_config(args.config)
    config = config.model_copy(update={"data": config.data.model_copy(update={"path": os.path.abspath(args.data_path)})})
    spec = FeatureSpec.from_config(config)
    output = args.output or tempfile.mkdtemp(prefix="ml1m-seq-")
    started = time.perf_counter()
    with beam.Pipeline(argv=config.beam_pipeline_args()) as pipeline:
        outputs = pipeline | sequences.BuildExamples(config, spec)
        sequences.write_outputs(outputs, os.path.join(output, "examples"), os.path.join(output, "quarantine"), os.path.join(output, "counts.json"))
    seconds = time.perf_counter() - started
    with open(os.path.join(output, "counts.json"), encoding="utf-8") as handle:
        counts = json.load(handle)
    result = {"protocol": "ml1m-seq v1", "data": args.data_path, "counts": counts, "wall_seconds": round(seconds, 1), "examples_dir": output}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", "ml1m_examples.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
