"""``taxonomist review``: a web page to accept or correct predictions, stored in a database and exported
as training rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from taxonomist.config import CatalogConfig, ConfigError, load_config


def review(
    predictions: Annotated[
        Path, typer.Argument(help="`taxonomist predict` output folder, or its predictions_long.csv.")
    ],
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="Checkpoint: its schema.json bounds corrections; its config.yaml finds images."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML run config whose catalog finds the images.")
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set", "-s", help="Override a config value: section.key=value, as --set does elsewhere."
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help="Catalog that was predicted (catalog.path).")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Image folder; used instead of the catalog config.")
    ] = None,
    image_template: Annotated[
        str, typer.Option(help="Image path under --images; {id} and {category} are filled in.")
    ] = "images/{id}.jpg",
    database_url: Annotated[
        str, typer.Option(help="SQLAlchemy URL of the decisions database, e.g. postgresql://host/db.")
    ] = "sqlite:///review.db",
    threshold: Annotated[float, typer.Option(help="Default 'confidence below' filter.")] = 0.5,
    host: Annotated[
        str, typer.Option(help="Interface to bind; 0.0.0.0 to accept remote clients.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
) -> None:
    """Review predictions in the browser (j/k move, a accept, 1-9 the model's top values, / type a value);
    GET /api/export.csv. A folder written by `taxonomist predict` records its catalog and checkpoint, so
    images, titles and allowed values need no more flags."""
    try:
        import uvicorn

        from taxonomist.cli.inputs import recorded_input
        from taxonomist.data.catalog import CATEGORY, ID
        from taxonomist.data.prepare import catalog_columns, catalog_titles, load_for_prediction
        from taxonomist.serve.review import create_review_app
    except ImportError as err:
        raise typer.BadParameter(
            f"the review app needs extra packages ({err.name}): pip install 'taxonomist[review]'"
        ) from err

    # What `taxonomist predict` recorded is the default; flags given here take precedence.
    recorded, recorded_checkpoint = recorded_input(predictions) if predictions.is_dir() else (None, None)
    source = images
    if source is None and (config is not None or checkpoint is not None or data is not None):
        # The same catalog `taxonomist predict` read: the checkpoint's config, with flags on top.
        base = checkpoint or recorded_checkpoint
        saved = base / "config.yaml" if base is not None else None
        flags = [*(overrides or []), *([f"catalog.path={data}"] if data else [])]
        try:
            source = load_config(config or saved, flags).catalog
        except ConfigError as err:
            raise typer.BadParameter(str(err)) from err
    if source is None:
        source = recorded
    if checkpoint is None and recorded_checkpoint is not None and recorded_checkpoint.is_dir():
        checkpoint = recorded_checkpoint
    titles, columns = None, (ID, CATEGORY)
    try:
        if isinstance(source, CatalogConfig):  # titles and the export's column names come with it
            titles, columns = catalog_titles(source), catalog_columns(source)
            # As `predict` does: labels and training-time row filters do not matter for finding images.
            source = load_for_prediction(source)
        app = create_review_app(
            predictions,
            source,
            titles=titles,
            columns=columns,
            image_template=image_template,
            schema=checkpoint,
            database_url=database_url,
            threshold=threshold,
        )
    except (ValueError, FileNotFoundError) as err:  # no predictions file, bad schema, no image folder
        raise typer.BadParameter(str(err)) from err
    uvicorn.run(app, host=host, port=port)
