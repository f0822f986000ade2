"""The loader's plan: everything decided once, before the first batch, and never changed after.

Which modalities and cells, which features of each (feature selection), where each column goes,
which transform each modality gets with the per-cell scales and per-column weights it needs, and
which obs columns ride along. The plan holds host (numpy) arrays only; the assembler moves what
the kernels read to the device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gpuload.errors import ArgumentError
from gpuload.formats import Modality, MultiomeStore
from gpuload.formats.store import file_of, row_location
from gpuload.plan.features import needs_counts, parse_feature_specs, select_features
from gpuload.plan.layout import Layout, column_destinations
from gpuload.plan.obs import ObsColumns, query_mask, select_columns, subset_positions
from gpuload.plan.stats import DatasetStats, compute_stats
from gpuload.plan.transforms import Transform, parse_transform

ALL = "all"


@dataclass(frozen=True)
class LoaderPlan:
    """What a loader delivers, decided once (see the module docstring)."""

    where: str  # "path:key", for messages
    files: tuple[str, ...]  # the dataset's files; files[i] holds rows file_starts[i]:file_starts[i + 1]
    file_starts: np.ndarray
    key: str  # the matrix read ("X", "layers/counts")
    deliver_file: bool  # batch["file"]: which file each cell came from (a dataset of several)
    n_vars: int
    modalities: tuple[Modality, ...]  # after feature selection: the delivered columns
    positions: np.ndarray  # the selected file rows, sorted
    transforms: dict[str, Transform]
    layout: Layout  # numpy arrays
    row_scale: np.ndarray  # [n_cells, n_modalities] float32
    obs_keys: tuple[str, ...]  # the delivered obs columns, in order
    obs: ObsColumns
    var_names: dict[str, list[str]]  # modality -> the names of its delivered columns, in order
    # modality -> its delivered columns as a mask over all of its columns: a features= spec that
    # makes another loader deliver the same columns (e.g. held-out cells, chosen on training cells)
    feature_masks: dict[str, np.ndarray]
    obsm: dict[str, np.ndarray]  # obsm key -> float32 [n_cells, k], delivered as batch["obsm"]

    def file_of(self, rows: np.ndarray) -> np.ndarray:
        """The index in :attr:`files` of the file holding each global row."""
        return file_of(self.file_starts, rows)

    def where_row(self, row: int) -> str:
        """``file:key row r``: the file that holds global ``row``, and its row there."""
        return row_location(self.files, self.file_starts, self.key, row)

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    def var_names_of(self, modality: str) -> list[str]:
        """The var names of a loaded modality's output columns."""
        if modality not in self.var_names:
            raise ArgumentError(f"modality {modality!r} is not loaded; loaded: {list(self.names)}")
        return self.var_names[modality]

    def categories_of(self, key: str) -> list[str]:
        """The category list of a delivered categorical obs column."""
        if key not in self.obs.categories:
            raise ArgumentError(
                f"obs column {key!r} is not a delivered categorical; those are {list(self.obs.categories)}"
            )
        return self.obs.categories[key]


def build_plan(
    store: MultiomeStore,
    *,
    modalities: str | Sequence[str] | None = None,
    transform=None,
    features=None,
    obs_keys: Sequence[str] | None = None,
    obsm_keys: Sequence[str] = (),
    deliver_file: bool = False,
    subset=None,
    split: Mapping[str, Sequence] | None = None,
    query: Callable = query_mask,
) -> LoaderPlan:
    """Resolve the loader's selection options against ``store`` (arguments as
    :class:`~gpuload.loader.MultiomeLoader`; ``query(obs, expression)`` evaluates a ``subset``
    query string).

    Reads the selected cells once when a ``{"top": k}`` feature spec needs nonzero counts, and
    once (again) when a transform needs statistics over the selected features.
    """
    full = resolve_modalities(store, modalities)
    names = [m.name for m in full]
    positions = subset_positions(store.obs, subset, split, store.path, query)
    keys = select_columns(
        store.obs, obs_keys, [m.data_name for m in full], store.path, list(store.modalities)
    )
    transforms = parse_transforms(transform, names)
    specs = parse_feature_specs(features, names)
    counted = compute_stats(store, positions, full) if needs_counts(specs) else None
    nonzero = None if counted is None else counted.col_nonzero
    mods = [select_features(m, specs[m.name], store.var, nonzero, str(store.path)) for m in full]
    needs_stats = any(t.needs_stats for t in transforms.values())
    stats = compute_stats(store, positions, mods) if needs_stats else None
    layout, row_scale = prepare_layout(store, mods, transforms, positions, stats)
    return LoaderPlan(
        where=f"{store.path}:{store.key}",
        files=tuple(str(f) for f in store.files),
        file_starts=store.file_starts,
        key=store.key,
        deliver_file=deliver_file,
        n_vars=store.n_vars,
        modalities=tuple(mods),
        positions=positions,
        transforms=transforms,
        layout=layout,
        row_scale=row_scale,
        obs_keys=tuple(keys),
        obs=ObsColumns.from_frame(store.obs, keys, str(store.path)),
        var_names={m.name: store.var.index[m.columns].tolist() for m in mods},
        feature_masks={m.name: np.isin(f.columns, m.columns) for f, m in zip(full, mods, strict=True)},
        obsm={key: store.obsm(key) for key in _obsm_keys(obsm_keys)},
    )


def _obsm_keys(keys) -> list[str]:
    if isinstance(keys, str):
        keys = [keys]
    if not all(isinstance(k, str) for k in keys):
        raise ArgumentError(f"obsm_keys must be a list of obsm key names, got {keys!r}")
    if len(set(keys)) != len(keys):
        raise ArgumentError(f"obsm_keys {list(keys)} repeats a key")
    return list(keys)


def resolve_modalities(store: MultiomeStore, modalities) -> list[Modality]:
    """The store's modalities named by ``modalities`` (``None``: every one, in file order;
    ``"all"``: one full-width ``"X"``; ``{key: name}``: modality ``name`` delivered as ``key``)."""
    if modalities is None:
        return list(store.modalities.values())
    if modalities == ALL:
        return [Modality("X", np.arange(store.n_vars, dtype=np.int64))]
    if isinstance(modalities, str):
        keys = {modalities: modalities}
    elif isinstance(modalities, Mapping) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in modalities.items()
    ):
        keys = dict(modalities)
    elif isinstance(modalities, Sequence) and all(isinstance(m, str) for m in modalities):
        if len(set(modalities)) != len(modalities):
            raise ArgumentError(f"modalities {list(modalities)} repeats a modality")
        keys = {m: m for m in modalities}
    else:
        raise ArgumentError(
            f"modalities must be a name, a sequence of names, {{key: name}} or 'all', got {modalities!r}"
        )
    if not keys:
        raise ArgumentError(f"modalities is empty; give one of {list(store.modalities)}, several, or 'all'")
    for name in keys.values():
        if name not in store.modalities:
            raise ArgumentError(
                f"{store.path}: unknown modality {name!r}; the data has {list(store.modalities)} (or 'all')"
            )
    if len(set(keys.values())) != len(keys):
        raise ArgumentError(f"modalities {keys} names a modality twice")
    return [
        store.modalities[name] if key == name else Modality(key, store.modalities[name].columns, name)
        for key, name in keys.items()
    ]


def parse_transforms(transform, names: list[str]) -> dict[str, Transform]:
    """One Transform per loaded modality, from one spec for all or a ``{modality: spec}`` dict."""
    if isinstance(transform, dict) and not ("name" in transform and transform.get("name") not in names):
        unknown = [k for k in transform if k not in names]
        if unknown:
            raise ArgumentError(f"transform names modalities {unknown} that are not loaded; loaded: {names}")
        return {n: parse_transform(transform.get(n)) for n in names}
    return {n: parse_transform(transform) for n in names}


def prepare_layout(
    store: MultiomeStore,
    modalities: list[Modality],
    transforms: dict[str, Transform],
    positions: np.ndarray,
    stats: DatasetStats | None,
) -> tuple[Layout, np.ndarray]:
    """Column routing, per-modality codes and per-cell scales, computed once (``stats``: over
    the selected cells and features, when a transform needs them)."""
    col_weight = np.ones(store.n_vars, dtype=np.float32)
    row_scale = np.ones((store.n_cells, len(modalities)), dtype=np.float32)
    codes, thresholds = [], []
    for i, mod in enumerate(modalities):
        prepared = transforms[mod.name].prepare(
            mod.name, store.obs, stats, mod.columns, positions, store.path
        )
        codes.append(prepared.code)
        thresholds.append(prepared.threshold)
        if prepared.row_scale is not None:
            row_scale[:, i] = prepared.row_scale
        if prepared.col_weight is not None:
            col_weight[mod.columns] = prepared.col_weight
    layout = Layout(
        names=tuple(m.name for m in modalities),
        widths=tuple(m.width for m in modalities),
        col_dest=column_destinations(store.n_vars, [m.columns for m in modalities]),
        mod_code=np.array(codes, dtype=np.int64),
        mod_threshold=np.array(thresholds, dtype=np.float64),
        col_weight=col_weight,
    )
    return layout, row_scale
