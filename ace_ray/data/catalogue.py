"""Writing a catalogue directory: products, impressions, manifest (and synth's ground truth).

Synth and the importers write into a staging folder inside the catalogue directory and publish it with
renames only when complete (``staged_catalogue``), so a failed or interrupted run never leaves a catalogue
whose files disagree, and never touches the user's input files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ace_ray.data.schema import (
    GROUND_TRUTH_FILE,
    IMAGES_DIR,
    IMPRESSIONS_FILE,
    IMPRESSIONS_SCHEMA,
    MANIFEST_FILE,
    PRODUCTS_FILE,
    PRODUCTS_SCHEMA,
    QUARANTINE_FILE,
    REPORT_FILE,
    Manifest,
    SchemaError,
    write_table,
)


def write_catalogue(
    root: str | Path,
    products: pd.DataFrame,
    impressions: pd.DataFrame,
    manifest: Manifest,
    ground_truth: pd.DataFrame | None = None,
) -> Path:
    """Write the contract's files under ``root``; products keep their extra attribute columns."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_table(products, root / PRODUCTS_FILE, PRODUCTS_SCHEMA)
    write_table(impressions, root / IMPRESSIONS_FILE, IMPRESSIONS_SCHEMA)
    if ground_truth is not None:
        write_table(ground_truth, root / GROUND_TRUTH_FILE)
    manifest.counts = {
        "products": len(products),
        "impressions": len(impressions),
        "sessions": int(impressions["session_id"].nunique()),
        "clicks": int(impressions["clicked"].sum()),
        "days": int(impressions["day"].nunique()),
    }
    manifest.write(root)
    return root


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link an image into the catalogue (no extra disk), copying across file systems.

    ``dst`` is never the source itself: unlinking it first would delete the user's photo."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        if os.path.samefile(src, dst):
            return
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_OUTPUTS = (PRODUCTS_FILE, IMPRESSIONS_FILE, GROUND_TRUTH_FILE, MANIFEST_FILE, QUARANTINE_FILE, REPORT_FILE)


@contextmanager
def staged_catalogue(
    out: str | Path, inputs: list[Path], images: Path | None, writes_images: bool = True
) -> Iterator[Path]:
    """A staging folder inside ``out`` to write the catalogue into; it replaces ``out``'s catalogue only
    when the block succeeds (``catalogue.json`` last), and is removed however the block ends.

    ``images`` is the folder the photos come from (None when they are made, as by synth); photos already
    inside ``out`` stay where they are. Refuses, before any work, an ``out`` where publishing would
    overwrite or delete an input file, or replace files or an ``images/`` folder that ace-ray did not write.
    """
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise SchemaError(f"{out}: --out must be a folder, and this is a file")
    in_place = images is not None and images.resolve().is_relative_to(out)
    replaces_images = writes_images and not in_place
    ours = (out / MANIFEST_FILE).is_file()
    for f in inputs:
        f = f.resolve()
        if any(f == (out / name).resolve() for name in _OUTPUTS):
            raise SchemaError(
                f"{f}: is an input, and importing to --out {out} would overwrite it; choose another --out"
            )
        if replaces_images and f.is_relative_to((out / IMAGES_DIR).resolve()):
            raise SchemaError(
                f"{f}: is an input inside {out / IMAGES_DIR}, which the import replaces; move it first"
            )
    foreign = [name for name in _OUTPUTS if (out / name).exists()] if not ours else []
    if foreign:  # files of the same names that ace-ray did not write: never replace them silently
        raise SchemaError(
            f"{out / foreign[0]}: already exists and was not written by ace-ray (no {MANIFEST_FILE} beside it); "
            "write the catalogue into another folder"
        )
    if replaces_images and (out / IMAGES_DIR).exists() and not ours:
        raise SchemaError(
            f"{out / IMAGES_DIR}: already exists and was not written by ace-ray (no {MANIFEST_FILE} beside it); "
            f"write into an empty folder, or (import table) pass --images {out / IMAGES_DIR} to use the photos "
            "where they are"
        )
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        yield stage
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()


def _publish(stage: Path, out: Path) -> None:
    """Move the staged catalogue into ``out`` with renames (same file system, each one atomic)."""
    if (stage / IMAGES_DIR).is_dir():
        if (out / IMAGES_DIR).exists() or (out / IMAGES_DIR).is_symlink():
            os.rename(out / IMAGES_DIR, stage / "previous-images")  # removed with the stage
        os.rename(stage / IMAGES_DIR, out / IMAGES_DIR)
    for name in (PRODUCTS_FILE, IMPRESSIONS_FILE, GROUND_TRUTH_FILE):
        if (stage / name).is_file():
            os.replace(stage / name, out / name)
        elif name == GROUND_TRUTH_FILE:  # a previous synth's truth does not describe this catalogue
            (out / name).unlink(missing_ok=True)
    # The last validation describes the previous files: it goes, so nothing can reuse it.
    for name in (QUARANTINE_FILE, REPORT_FILE):
        (out / name).unlink(missing_ok=True)
    os.replace(stage / MANIFEST_FILE, out / MANIFEST_FILE)  # last: the catalogue is complete
