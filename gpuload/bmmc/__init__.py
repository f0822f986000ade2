"""The NeurIPS 2021 BMMC multiome dataset (GEO GSE194122): its facts (``schema``: shape, obs
columns, the competition split) and a generator of synthetic files with its exact schema
(``synth``). The readers never need this package; the competition split and the applications do."""
