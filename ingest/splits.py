"""Beam: the train/eval/test split of the examples (``split.method``; ``ingest.sequences`` applies it).

  time: sort all examples by (timestamp, user_id, item_id); the first ``train`` fraction is train,
        the next ``eval`` eval, the rest test (protocol ml1m-seq). Exact, without a global sort:
        hourly counts locate the two cut points; only the examples of the (at most two) hours
        holding a cut are sorted together.
  user: a salted hash of user_id assigns whole users to a split.
"""
from __future__ import annotations

import hashlib
import math
from typing import Iterable, List, Optional, Tuple

import apache_beam as beam

BUCKET_SECONDS = 3600


def time_cuts(bucket_counts: Iterable[Tuple[int, int]], fractions: Tuple[float, float]) -> List[Tuple[int, int]]:
    """For each cumulative fraction: (bucket holding the cut, examples of that bucket before it).

    The cut of fraction f is the global rank floor(f * N): examples ranked below it go left.
    """
    counts = sorted(bucket_counts)
    total = sum(n for _, n in counts)
    cuts = []
    for fraction in fractions:
        rank, seen = math.floor(fraction * total), 0
        for bucket, n in counts:
            if seen + n > rank:
                cuts.append((bucket, rank - seen))
                break
            seen += n
        else:
            cuts.append((counts[-1][0] + 1 if counts else 0, 0))
    return cuts


def _split_by_bucket(bucket: int, cuts) -> Optional[int]:
    """Split index of a bucket with no cut in it; None for a bucket holding a cut."""
    for index, (cut_bucket, _) in enumerate(cuts):
        if bucket == cut_bucket:
            return None
        if bucket < cut_bucket:
            return index
    return len(cuts)


def _assign_boundary_bucket(bucket_examples, cuts):
    bucket, examples = bucket_examples
    ordered = sorted(examples, key=lambda ke: ke[0])
    for rank, (_, example) in enumerate(ordered):
        split = len(cuts)
        for index, (cut_bucket, offset) in enumerate(cuts):
            if bucket < cut_bucket or (bucket == cut_bucket and rank < offset):
                split = index
                break
        yield split, example


def user_split(user_id: str, fractions: Tuple[float, float, float], seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{user_id}".encode("utf-8")).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64
    return 0 if point < fractions[0] else 1 if point < fractions[0] + fractions[1] else 2


class SplitByTime(beam.PTransform):
    def __init__(self, train: float, eval_: float):
        super().__init__()
        self.fractions = (train, train + eval_)

    def expand(self, keyed):
        buckets = keyed | "HourOf" >> beam.Map(lambda ke: (ke[0][0] // BUCKET_SECONDS, 1)) | beam.CombinePerKey(sum)
        cuts = beam.pvalue.AsSingleton(
            buckets
            | beam.combiners.ToList()
            | "Cuts" >> beam.Map(time_cuts, self.fractions)
        )

        def route(key_example, cuts):
            bucket = key_example[0][0] // BUCKET_SECONDS
            split = _split_by_bucket(bucket, cuts)
            if split is None:
                yield beam.pvalue.TaggedOutput("boundary", (bucket, key_example))
            else:
                yield split, key_example[1]

        routed = keyed | "Route" >> beam.ParDo(route, cuts).with_outputs("boundary", main="decided")
        at_cuts = routed.boundary | beam.GroupByKey() | "RankAtCut" >> beam.FlatMap(_assign_boundary_bucket, cuts)
        return (routed.decided, at_cuts) | beam.Flatten()
