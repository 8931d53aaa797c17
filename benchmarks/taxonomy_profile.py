"""Diagnostic: where taxonomy ``predict`` spends its time, per sentence-encoder runtime (issue 17).

Times each stage of a saved taxonomy model on its run's test titles: normalising, the sentence encoder,
the path methods (retrieval, heads, lexical), the soft ensemble and the brand. The encoder is the only
stage a runtime changes; the rest bounds what any runtime can gain. Prints one line per variant.
Usage: ``python benchmarks/taxonomy_profile.py RUN``.
"""

from __future__ import annotations

import argparse
import json
import time

from taxonomist.config import TaxonomyConfig, load_config
from taxonomist.inference.taxonomy import load_model
from taxonomist.training.taxonomy import load_titles, split_part

VARIANTS = [("torch", "fp32"), ("openvino", "bf16"), ("onnxruntime", "int8"), ("onnxruntime", "fp32")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="A taxonomy run folder (its config rebuilds the test split).")
    args = parser.parse_args()
    cfg = load_config(f"{args.run}/config.yaml", cls=TaxonomyConfig)
    titles = split_part(load_titles(cfg), cfg, "test").frame["title"].tolist()
    for runtime, precision in VARIANTS:
        model = load_model(args.run, runtime=runtime, precision=precision)
        model.predict(titles[:64])  # warm-up, and the export on first use
        seconds = {}
        start = time.perf_counter()
        prepared = model.prepare(titles)
        seconds["prepare"], start = time.perf_counter() - start, time.perf_counter()
        embeddings = model.embed(prepared)
        seconds["encoder"], start = time.perf_counter() - start, time.perf_counter()
        preds, scores = model.method_outputs(prepared, model.resolve_methods("soft"), embeddings=embeddings)
        seconds["methods"], start = time.perf_counter() - start, time.perf_counter()
        path = model.combine(preds, scores, how="soft")
        seconds["combine"], start = time.perf_counter() - start, time.perf_counter()
        model.finish(titles, path)  # brand leaves, then brands
        seconds["brand"] = time.perf_counter() - start
        name = f"{runtime}-{precision}"
        rate = len(titles) / sum(seconds.values())
        print(name, json.dumps({"titles_per_s": round(rate), **{k: round(v, 2) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
