"""Draw the working sample: seeded, stratified by source dataset and relational-ness like HALP's 10k set."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pandas as pd

from halp.config import DataSettings
from halp.data.benchmarks import READERS
from halp.data.images import write_embedded
from halp.data.schema import ANSWERED, REQUIRED, read_dataset
from halp.digests import file_digest

log = logging.getLogger(__name__)
STRATA = ["dataset", "is_relational"]
SAMPLE_COLUMNS = [
    "question_id",
    "image_name",
    "image_path",
    "image_sha256",
    "question",
    "gt_answer",
    "gt_repaired",
    "category",
    "description",
    "dataset",
    "is_relational",
]


def stratified_sample(table: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n rows whose strata keep the table's proportions (largest-remainder rounding), in a seeded order.

    sklearn's stratified splitters refuse strata with a single member, which real datasets have,
    so the quota per stratum is computed here and each stratum is sampled with the same seed.
    """
    if n >= len(table):
        return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    sizes = table.groupby(STRATA, sort=True).size()
    exact = sizes / sizes.sum() * n
    quota = np.floor(exact).astype(int)
    shortfall = n - int(quota.sum())
    remainders = (exact - quota).sort_values(ascending=False, kind="stable")
    quota[remainders.index[:shortfall]] += 1
    parts = [
        group.sample(n=int(quota[key]), random_state=seed)
        for key, group in table.groupby(STRATA, sort=True)
        if quota[key] > 0
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def sample_dataset(settings: DataSettings) -> pd.DataFrame:
    """Validate the configured dataset (HALP's CSV or a benchmark's files), draw the sample and write it to
    settings.out (and settings.rejected, empty when nothing was left out). A failed run leaves neither, so
    no stage reads an old sample."""
    for path in (settings.out, settings.rejected):
        path.unlink(missing_ok=True)
    shutil.rmtree(settings.embedded_images, ignore_errors=True)  # it holds this sample's images only
    table, rejected = read_dataset(
        settings.source,
        settings.images_dir,
        settings.columns,
        settings.drop_invalid,
        required=ANSWERED if settings.format == "hf" else REQUIRED,
        reader=READERS.get(settings.format),
    )
    for path in (settings.out, settings.rejected):
        path.parent.mkdir(parents=True, exist_ok=True)
    rejected.drop(columns="image_bytes").to_csv(settings.rejected, index=False, lineterminator="\n")
    if len(rejected):
        log.warning("left out %d invalid rows, listed with reasons in %s", len(rejected), settings.rejected)
    if table.gt_repaired.any():
        repaired = table.question_id[table.gt_repaired]
        log.warning(
            "repaired %d ground truths stored as ', '-joined characters (flagged in gt_repaired): %s%s",
            len(repaired),
            ", ".join(repaired[:10]),
            ", ..." if len(repaired) > 10 else "",
        )
    sample = stratified_sample(table, settings.sample_size, settings.seed)
    settings.embedded_images.mkdir(parents=True, exist_ok=True)  # a DVC output, so there even when empty
    embedded = sample.image_bytes.notna()
    sample.loc[embedded, "image_path"] = [
        str(write_embedded(data, settings.embedded_images)) for data in sample.image_bytes[embedded]
    ]
    # The images' content, so a replaced image changes this file and DVC and `halp extract` redo it.
    sample["image_sha256"] = sample.image_path.map(file_digest)
    sample = sample[SAMPLE_COLUMNS]
    sample.to_csv(settings.out, index=False, lineterminator="\n")
    share = sample.is_relational.mean()
    log.info(
        "sampled %d of %d questions (%.0f%% relational) -> %s",
        len(sample),
        len(table),
        100 * share,
        settings.out,
    )
    return sample
