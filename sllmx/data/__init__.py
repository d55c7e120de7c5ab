"""Data: the pipeline from a data source to train / dev / test datasets (:mod:`sllmx.data.pipeline`)
and the data-quality checks that run before training and on demand (``python -m sllmx.data check``)."""

from sllmx.data.pipeline import (Splits, choose_layout, convert_rows, detect_format, fitting_formats, hold_out,
                                 load_splits, rename_columns, sha256_of)

__all__ = ["Splits", "choose_layout", "convert_rows", "detect_format", "fitting_formats", "hold_out",
           "load_splits", "rename_columns", "sha256_of"]
