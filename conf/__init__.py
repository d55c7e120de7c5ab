"""The Hydra config tree (shipped as ``sllmx.conf``; Hydra reads it as ``pkg://sllmx.conf``)."""
