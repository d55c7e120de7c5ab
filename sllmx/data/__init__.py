"""Data: the pipeline from a data source to train / dev / test datasets (:mod:`sllmx.data.pipeline`), the
readers of data files (:mod:`sllmx.data.readers`), what format plugins use to read rows
(:mod:`sllmx.data.rows`), and the data-quality checks that run before training and on demand
(``python -m sllmx.data check``)."""

from sllmx.data.detect import choose_layout, detect_format, fitting_formats, rename_columns
from sllmx.data.holdout import hold_out
from sllmx.data.pipeline import Splits, convert_rows, load_splits, prepare_splits, sha256_of

__all__ = ["Splits", "choose_layout", "convert_rows", "detect_format", "fitting_formats", "hold_out",
           "load_splits", "prepare_splits", "rename_columns", "sha256_of"]
