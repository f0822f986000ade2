"""Where gpuload's batches meet other frameworks: the DALI hand-off (``dali``). These modules use
the loader's public API only."""
