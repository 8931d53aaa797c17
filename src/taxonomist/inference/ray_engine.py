"""Scale-out batch prediction on Ray: the local engine's outputs, computed by a pool of (GPU) actors.

The input rows (id, category, image path) are cut into fixed shards of ``shard_rows``. Each pending
shard goes to an actor that loaded the model once; the actor decodes, predicts and writes the shard's
Parquet parts itself (to storage every node sees), atomically. A shard whose predictions part exists is
finished, so a rerun after a crash, a preempted node or Ctrl-C only computes the missing shards and never
duplicates rows. Ray retrying a shard is just as harmless: the rewrite replaces the part whole. A rerun
also retries the rows of finished shards whose image failed (``RETRIED_REASONS``), replacing their rows
in both parts, as the local engine does.

Layout of ``output_dir``::

    manifest.json                  input digest + settings; a rerun with other ones is refused
    predictions/part-00000.parquet id, category, attribute, value, confidence (the local long layout)
    errors/part-00000.parquet      id, path, reason, detail (unreadable images, unknown categories)
    summary.json                   counts and throughput of the last run
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from taxonomist.data.catalog import CATEGORY, ID, TEXT, Catalog, join_texts, missing_text_note, read_table
from taxonomist.data.images import DEFAULT_MAX_PIXELS, ERROR_COLUMNS
from taxonomist.inference.predictor import (
    Predictor,
    PredictSummary,
    long_frame,
    predicted_by_inputs,
    retried_ids,
    retry_counts,
)
from taxonomist.io import (
    MANIFEST,
    ResumeError,
    atomic_write,
    atomic_write_text,
    replace_rows,
    resume_conflict,
    rows_digest,
)
from taxonomist.models.build import load_heads_checkpoint
from taxonomist.models.checkpoint import checkpoint_version

PATH = "path"
ROW_COLUMNS = (ID, CATEGORY, PATH)
# Fixed schemas, so an empty part (a shard of bad images) reads back like the others.
SCHEMAS = {
    "predictions": pa.schema(
        [(c, pa.string()) for c in ("id", "category", "attribute", "value")] + [("confidence", pa.float64())]
    ),
    "errors": pa.schema([(c, pa.string()) for c in ERROR_COLUMNS]),
}
Kind = Literal["predictions", "errors"]


def read_rows(
    source: Catalog | str | os.PathLike, text_columns: Sequence[str] | None = None
) -> tuple[pd.DataFrame, str | None]:
    """id, category, absolute image path (all text) and, for listing heads, ``text``, in input order: what
    the shards are cut from; and a note where the rows lack listing text columns (else None).

    ``source`` is a :class:`Catalog`, or a CSV/Parquet table (or a folder of Parquet shards, read in
    file name order) with columns ``id``, ``category`` and ``path``; relative paths are relative to the
    table's folder. Paths are made absolute here because Ray workers do not share the driver's cwd.

    ``text_columns``: None for image-only heads (no text read), else the checkpoint's
    :attr:`~taxonomist.models.checkpoint.HeadsCheckpoint.text_columns`. A catalog brings its joined ``text``
    (and its ``text_note``). A table's text is joined from those columns as training joined them
    (:func:`join_texts`; any of them, a missing one blank); only where it has none of them, a ``text``
    column is the whole listing text, as for checkpoints that record no columns, but never for a model of
    several columns, which did not learn from one text (as :meth:`Predictor.predict` refuses it).
    """
    if isinstance(source, Catalog):
        rows = pd.DataFrame(
            {
                ID: source.frame[ID].astype(str).to_numpy(),
                CATEGORY: source.frame[CATEGORY].astype(str).to_numpy(),
                PATH: [os.path.abspath(p) for p in source.image_paths()],
            }
        )
        if text_columns is None:  # image-only heads never read text
            return rows, None
        texts = source.frame[TEXT].astype(str).to_numpy() if TEXT in source.frame.columns else ""
        return rows.assign(**{TEXT: texts}), source.text_note
    source = Path(source)
    files = sorted(source.glob("*.parquet")) if source.is_dir() else [source]
    if not files:
        raise FileNotFoundError(f"{source}: no *.parquet shards in this folder")
    frames = []
    lacking: dict[str, int] = {}  # text column → files without it
    for file in files:
        table = read_table(file)
        missing = [c for c in ROW_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{file}: missing columns {missing}; need {list(ROW_COLUMNS)}")
        rows = table[list(ROW_COLUMNS)].fillna("").astype(str)
        rows[PATH] = [os.path.abspath(file.parent / p) for p in rows[PATH]]
        rows[CATEGORY] = [" ".join(c.split()) for c in rows[CATEGORY]]  # as the catalog reader folds it
        if text_columns is not None:
            rows[TEXT], absent = _listing_text(table, text_columns, file)
            for column in absent:
                lacking[column] = lacking.get(column, 0) + 1
        frames.append(rows.assign(**{_FILE: str(file)}))
    rows = pd.concat(frames, ignore_index=True)
    _refuse_bad_ids(rows)
    return rows.drop(columns=_FILE), _text_note(source, list(text_columns or [TEXT]), lacking, len(files))


def _listing_text(table: pd.DataFrame, columns: Sequence[str], file: Path) -> tuple[pd.Series, list[str]]:
    """One file's listing texts (see :func:`read_rows`) and the text columns it lacks."""
    named = [c for c in columns if c in table.columns]
    if named:
        return join_texts(table[named]), [c for c in columns if c not in named]
    if TEXT not in table.columns:
        return pd.Series("", index=table.index), list(columns or [TEXT])
    if len(columns) > 1:
        raise ValueError(
            f"{file}: a 'text' column, but this checkpoint read its listing text from the columns "
            f"{list(columns)}, joined: give the row table those columns instead (any may be left out, or "
            "blank where a listing has none)"
        )
    return table[TEXT].fillna("").astype(str), []


def _text_note(source: Path, columns: list[str], lacking: dict[str, int], n_files: int) -> str | None:
    """What a row table without (some of) the text columns is predicted from, in one line, as the
    catalog reader says it for a file to predict (:attr:`Catalog.text_note`)."""
    if not lacking:
        return None
    names = [
        repr(c) + (f" (absent from {lacking[c]} of {n_files} files)" if lacking[c] < n_files else "")
        for c in columns
        if c in lacking
    ]
    kept = [c for c in columns if c not in lacking]
    return missing_text_note(source, names, kept, partly=any(n < n_files for n in lacking.values()))


_FILE = "_file"


def _refuse_bad_ids(rows: pd.DataFrame) -> None:
    """A row table is written by a pipeline, one row per item: a blank id or category, or an id twice
    (which would be predicted twice, from two images), is that pipeline's bug, so the job stops before
    it starts, naming the rows (a catalog file's bad rows are errors.csv rows instead)."""
    blank = (rows[ID].str.strip() == "") | (rows[CATEGORY] == "")
    repeated = rows[ID].duplicated(keep=False) & ~blank
    for bad, what in ((blank, "a blank id or category"), (repeated, "an id another row has too")):
        if bad.any():
            examples = rows.loc[bad, [_FILE, ID]].head(3).itertuples(index=False, name=None)
            raise ValueError(
                f"{int(bad.sum())} rows of the row table have {what}, e.g. (file, id) {list(examples)}; "
                "a row table needs one row per item (a catalog file reports such rows in errors.csv)"
            )


def part_path(output_dir: str | os.PathLike, kind: Kind, shard: int) -> Path:
    return Path(output_dir) / kind / f"part-{shard:05d}.parquet"


def read_ray_output(output_dir: str | os.PathLike, kind: Kind = "predictions") -> pd.DataFrame:
    """All shards of one kind concatenated in shard order (= input order); refuses an unfinished run."""
    n_shards = _read_manifest(Path(output_dir))["n_shards"]
    parts = [part_path(output_dir, kind, k) for k in range(n_shards)]
    missing = [k for k, p in enumerate(parts) if not part_path(output_dir, "predictions", k).exists()]
    if missing:
        raise FileNotFoundError(
            f"{output_dir}: {len(missing)} of {n_shards} shards not written yet (e.g. {missing[:5]}); "
            "rerun predict_with_ray to finish them"
        )
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def predict_with_ray(
    checkpoint_dir: str | os.PathLike,
    source: Catalog | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    shard_rows: int = 512,
    num_actors: int | None = None,
    num_gpus_per_actor: float | None = None,
    num_cpus_per_actor: float = 1,
    decode_workers: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_confidence: float = 0.0,
    placeholder: str = "",
    address: str | None = None,
    progress: bool = True,
    runtime: str = "auto",
    precision: str | None = None,
    allow_missing_image: bool = False,
) -> PredictSummary:
    """Predict every row of ``source`` into sharded Parquet under ``output_dir``; resumable.

    ``num_gpus_per_actor`` defaults to 1 when the cluster has GPUs, else 0; ``num_actors`` to one per GPU
    (or per ``num_cpus_per_actor`` CPUs), never more than the pending shards. ``decode_workers`` are
    image-decoding processes inside each actor (0 = decode in the actor). An already initialised Ray is
    used as is; otherwise this connects to ``address`` (None: a local Ray) and disconnects at the end.
    ``allow_missing_image``: as for :meth:`Predictor.predict_catalog` (listing heads only).
    """
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be positive, got {shard_rows}")
    start = time.perf_counter()
    output_dir = Path(output_dir).absolute()
    checkpoint_dir = Path(checkpoint_dir).absolute()
    checkpoint, _ = load_heads_checkpoint(checkpoint_dir)  # a clear error before any Ray start-up
    checkpoint.check_allow_missing_image(allow_missing_image)
    reads_text = "text" in checkpoint.inputs
    rows, text_note = read_rows(source, checkpoint.text_columns if reads_text else None)
    n_shards = -(-len(rows) // shard_rows)
    settings = {
        "model": checkpoint_version(checkpoint_dir),
        "min_confidence": min_confidence,
        "placeholder": placeholder,
        "rows_sha256": rows_digest(rows),
        # The numerics asked for, as the local engine's feature key records them: a resumed job's shards
        # must not come from two runtimes.
        "numerics": f"{runtime} {precision or checkpoint.precision}",
    }
    if reads_text:  # as the local engine: a resumed job fills in the same rows
        settings["allow_missing_image"] = allow_missing_image
    _claim(output_dir, {"n_rows": len(rows), "shard_rows": shard_rows, "n_shards": n_shards, **settings})
    pending = [k for k in range(n_shards) if not part_path(output_dir, "predictions", k).exists()]
    finished = sorted(set(range(n_shards)) - set(pending))
    retry = {k: retried_ids(pd.read_parquet(part_path(output_dir, "errors", k))) for k in finished}
    retry = {k: ids for k, ids in retry.items() if ids}
    if pending or retry:
        items = [
            {
                "shard": k,
                "retry": sorted(retry.get(k, ())),
                **{c: rows[c].iloc[k * shard_rows : (k + 1) * shard_rows].tolist() for c in rows.columns},
            }
            for k in [*pending, *retry]
        ]
        options = {
            "batch_size": batch_size,
            "decode_workers": decode_workers,
            "max_pixels": max_pixels,
            "min_confidence": min_confidence,
            "placeholder": placeholder,
            "runtime": runtime,
            "precision": precision,
            "allow_missing_image": allow_missing_image,
        }
        with _ray(address) as ray:
            ray.data.DataContext.get_current().enable_progress_bars = progress
            gpus = num_gpus_per_actor
            if gpus is None:
                gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            actors = num_actors or _auto_actors(ray.cluster_resources(), gpus, num_cpus_per_actor)
            ray.data.from_items(items).map_batches(
                ShardPredictor,
                fn_constructor_args=(str(checkpoint_dir), str(output_dir), options),
                batch_size=1,
                batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=max(1, min(actors, len(items)))),
                num_cpus=num_cpus_per_actor,
                num_gpus=gpus,
            ).materialize()
    parts = [pd.read_parquet(part_path(output_dir, "errors", k)) for k in range(n_shards)]
    errors = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(ERROR_COLUMNS))
    error_ids = list(dict.fromkeys(errors[ID]))
    # Rows with predictions, counted from the parts: with allow_missing_image a row can be in both.
    predicted_ids = [i for k in range(n_shards) for i in _ids(part_path(output_dir, "predictions", k))]
    by_inputs = None
    if reads_text:
        by_inputs = predicted_by_inputs(
            dict(zip(rows[ID].astype(str), rows[TEXT], strict=True)), predicted_ids, error_ids
        )
    seconds = time.perf_counter() - start
    counts = retry_counts(retry, error_ids)
    done_rows = sum(len(range(k * shard_rows, min((k + 1) * shard_rows, len(rows)))) for k in pending)
    done_rows += counts["retried_rows"]
    summary = PredictSummary(
        str(output_dir),
        len(rows),
        len(predicted_ids),
        len(error_ids),
        n_shards - len(pending),
        seconds,
        done_rows / seconds if done_rows and seconds > 0 else None,  # as the local engine: None for none
        {str(r): int(n) for r, n in errors["reason"].value_counts().items()},
        predicted_by_inputs=by_inputs,
        **counts,
        text_note=text_note,
    )
    atomic_write_text(output_dir / "summary.json", json.dumps(summary.to_dict(), indent=1))
    return summary


def _ids(part: Path) -> list[str]:
    """The distinct ids of one shard's part, in order (a predictions part has a row per attribute)."""
    return list(dict.fromkeys(pq.read_table(part, columns=["id"])["id"].to_pylist()))


class ShardPredictor:
    """Ray Data callable class: one per actor, so the model loads once and then serves many shards.

    Each call gets whole shards (one row each: shard number, the ids to retry of a finished shard, its
    ids, categories, paths), writes their parts and returns one small stats row per shard, never the
    predictions themselves.
    """

    def __init__(self, checkpoint_dir: str, output_dir: str, options: dict) -> None:
        import ray

        # Ray hides all but the actor's own GPUs, so "cuda" is the one it was given; an actor given none
        # stays on the CPU even where the machine has GPUs.
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        # Every actor loads the run's export (the first to need it builds it, under a lock).
        self.predictor = Predictor.from_pretrained(
            checkpoint_dir, device=device, runtime=options["runtime"], precision=options["precision"]
        )
        self.output_dir = Path(output_dir)
        self.options = options

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            [
                self.predict_shard(
                    r["shard"], r[ID], r[CATEGORY], r[PATH], r.get(TEXT), retry=[str(i) for i in r["retry"]]
                )
                for r in batch.to_dict("records")
            ]
        )

    def predict_shard(
        self,
        shard: int,
        ids: Sequence[str],
        categories: Sequence[str],
        paths: Sequence[str],
        texts: Sequence[str] | None = None,
        *,
        retry: Sequence[str] = (),
    ) -> dict:
        """``Predictor.predict_chunk`` (what the local engine runs) on one shard; errors part, then
        predictions part (the one that marks the shard finished). ``retry``: the ids of a finished shard
        to predict again; their rows replace theirs in both parts, predictions first: while the errors
        part lists a row, a rerun retries it, so a crash mid-retry is made good by the next run."""
        start = time.perf_counter()
        ids, categories, paths = [str(v) for v in ids], [str(v) for v in categories], [str(v) for v in paths]
        retried = set(retry)
        rows = [r for r, item in enumerate(ids) if item in retried] if retry else range(len(ids))
        opts = self.options
        preds, errors = self.predictor.predict_chunk(
            [ids[r] for r in rows],
            [categories[r] for r in rows],
            [paths[r] for r in rows],
            texts=[str(texts[r]) for r in rows] if texts is not None else None,
            batch_size=opts["batch_size"],
            num_workers=opts["decode_workers"],
            max_pixels=opts["max_pixels"],
            min_confidence=opts["min_confidence"],
            placeholder=opts["placeholder"],
            allow_missing_image=opts["allow_missing_image"],
        )
        frames: dict[Kind, pd.DataFrame] = {
            "errors": pd.DataFrame([e.__dict__ for e in errors], columns=list(ERROR_COLUMNS)),
            "predictions": long_frame(preds),
        }
        if retry:  # predictions first, as said above
            frames = {
                kind: replace_rows(
                    pd.read_parquet(part_path(self.output_dir, kind, shard)), frames[kind], retry, ids
                )
                for kind in ("predictions", "errors")
            }
        for kind, frame in frames.items():
            _atomic_parquet(frame, self.output_dir, kind, shard)
        return {
            "shard": shard,
            "rows": len(rows),
            "errors": len(frames["errors"]),
            "seconds": time.perf_counter() - start,
        }


@contextlib.contextmanager
def _ray(address: str | None) -> Iterator:
    try:
        import ray
    except ImportError as err:
        raise ImportError("the Ray engine needs Ray Data: pip install 'taxonomist[ray]'") from err
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address)
    try:
        yield ray
    finally:
        ray.shutdown()


def _auto_actors(resources: dict, gpus_per_actor: float, cpus_per_actor: float) -> int:
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


def _read_manifest(output_dir: Path) -> dict:
    path = output_dir / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{output_dir}: no {MANIFEST}; not a predict_with_ray output folder")
    return json.loads(path.read_text(encoding="utf-8"))


def _claim(output_dir: Path, manifest: dict) -> None:
    """Write the manifest, or check that the one there describes the same input and settings."""
    for kind in SCHEMAS:
        (output_dir / kind).mkdir(parents=True, exist_ok=True)
    path = output_dir / MANIFEST
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != manifest:
            shards = range(int(previous.get("n_shards", 0)))
            finished = all(part_path(output_dir, "predictions", k).exists() for k in shards)
            raise ResumeError(resume_conflict(output_dir, previous, manifest, finished))
    else:
        atomic_write_text(path, json.dumps(manifest, indent=1))


def _atomic_parquet(frame: pd.DataFrame, output_dir: Path, kind: Kind, shard: int) -> None:
    """A unique temporary name, then a rename: readers and resumes see a whole part or none, even if a
    retried shard writes the same part concurrently."""
    table = pa.Table.from_pandas(frame, schema=SCHEMAS[kind], preserve_index=False)
    atomic_write(part_path(output_dir, kind, shard), lambda tmp: pq.write_table(table, tmp))
