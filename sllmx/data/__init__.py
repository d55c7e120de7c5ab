"""Data: the pipeline from a data source to train / dev / test datasets (:mod:`sllmx.data.pipeline`), the
readers of data files (:mod:`sllmx.data.readers`), what format plugins use to read rows
(:mod:`sllmx.data.rows`), and the data-quality checks that run before training and on demand
(``python -m sllmx.data check``).  Import the modules themselves: this package imports none of them, so a
format plugin that reads rows does not load the pipeline."""
