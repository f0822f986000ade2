"""gpuload inside Lightning: a ``LightningDataModule`` whose train/val/test dataloaders are
:class:`~gpuload.MultiomeLoader` s.

Three things a hand-written datamodule gets wrong, and how this one does them:

- **The split is decided once**, in ``__init__``, from obs alone (see :func:`split_subsets`):
  every process of a DDP run computes the same cells per stage.
- **The loaders are built in** ``setup()``, which Lightning calls after the process group
  exists, so each loader takes its rank's share from ``torch.distributed``. Lightning 2.6 only
  injects a ``DistributedSampler`` into ``torch.utils.data.DataLoader`` objects, and a
  MultiomeLoader is not one, so ``Trainer(strategy="ddp")`` needs no extra flag.
- **Resume.** Lightning 2.6 saves the train loader's ``state_dict()`` with its fit loop and
  loads it back when the checkpoint was taken mid-epoch (with a known ``len`` it fetches no batch
  ahead, so the count is exact). It does not when the epoch had finished, so the datamodule saves
  the same state too: an end-of-epoch checkpoint then resumes with the next epoch's order, as an
  uninterrupted run would. :class:`LightningLoader` accepts what a checkpoint holds (any rank's
  state, a finished epoch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lightning as L
import numpy as np

from gpuload.bmmc import schema
from gpuload.checks import non_negative_int, positive_int
from gpuload.errors import ArgumentError
from gpuload.formats import DataSource, MultiomeStore, open_multiome
from gpuload.loader import MultiomeLoader

STAGES = ("train", "val", "test")
SPLIT_MODES = ("auto", "competition", "random")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


class LightningLoader(MultiomeLoader):
    """A MultiomeLoader that resumes from what a Lightning checkpoint holds.

    Rank 0 writes the checkpoint, and every rank loads it: ranks step in lockstep (equal batch
    counts per rank), so rank 0's position is every rank's. A state saved after the epoch's last
    batch (Lightning checkpoints in ``on_train_batch_end``) means the next epoch begins.
    """

    def load_state_dict(self, state: dict) -> None:
        state = {**state, "rank": self.state_dict()["rank"]}
        if state.get("batches_done") == len(self):
            state.update(epoch=int(state["epoch"]) + 1, batches_done=0)
        super().load_state_dict(state)


def split_subsets(
    store: MultiomeStore, split, fractions: Sequence[float], seed: int
) -> tuple[Mapping[str, object], str]:
    """The cells of each stage (a loader ``subset=``) and a sentence saying how they were chosen.

    ``split`` is ``"auto"`` (the competition split by batch when obs ``batch`` has cells in the
    competition's train, val and test batches, :data:`gpuload.bmmc.schema.SPLITS`; else
    ``"random"``), ``"competition"`` (that split, or an error), ``"random"`` (a seeded random
    permutation cut by ``fractions`` = (train, val, test)), ``None`` (every cell trains) or a
    ``{stage: subset}`` mapping of loader ``subset=`` values (query, mask or indices).
    """
    if split is None:
        return {"train": None}, "every cell trains; no validation or test cells"
    if isinstance(split, Mapping):
        unknown = [stage for stage in split if stage not in STAGES]
        if unknown or "train" not in split:
            raise ArgumentError(
                f"split as a mapping needs a 'train' key and only keys of {STAGES}; got {list(split)}"
            )
        return dict(split), "the subsets given per stage"
    if split not in SPLIT_MODES:
        raise ArgumentError(
            f"split must be one of {SPLIT_MODES}, None or a {{stage: subset}} mapping; got {split!r}"
        )
    if split != "random":
        batches = store.obs["batch"].astype(str).to_numpy() if "batch" in store.obs.columns else None
        rows = (
            {s: np.flatnonzero(np.isin(batches, schema.SPLITS[s])) for s in STAGES}
            if batches is not None
            else {}
        )
        if rows and all(r.size for r in rows.values()):
            return rows, "the competition split by batch (gpuload.bmmc.schema.SPLITS)"
        if split == "competition":
            raise ArgumentError(
                f"split='competition': {store.path} has no obs 'batch' column with cells in each of the "
                f"competition's train, val and test batches {schema.SPLITS}"
            )
    return _random_split(store.n_cells, fractions, seed)


def _random_split(n: int, fractions: Sequence[float], seed: int) -> tuple[Mapping[str, object], str]:
    share = np.asarray(fractions, dtype=float)
    if share.shape != (3,) or (share < 0).any() or share[0] == 0 or not np.isclose(share.sum(), 1.0):
        raise ArgumentError(
            f"fractions must be (train, val, test), non-negative, train > 0, summing to 1; got {fractions!r}"
        )
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(share[:2]) * n).astype(int)
    rows = {s: np.sort(part) for s, part in zip(STAGES, np.split(order, cuts), strict=True) if part.size}
    if "train" not in rows:
        raise ArgumentError(f"fractions={tuple(fractions)} leave no training cell among {n}")
    how = "/".join(f"{f:.0%}" for f in share)
    return rows, f"a seeded random {how} (train/val/test) of cells, seed {seed}"


class MultiomeDataModule(L.LightningDataModule):
    """Train, validation and test :class:`~gpuload.MultiomeLoader` s of one multiome dataset.

    Parameters
    ----------
    data
        What :class:`~gpuload.MultiomeLoader` reads: an ``.h5ad``, an ``.h5mu``, a
        ``{modality: .h5ad}`` mapping, a list of them (split over their union), or an open
        :class:`~gpuload.MultiomeStore` shared by the loaders.
    batch_size
        Cells per batch, every stage.
    split
        Which cells each stage uses: ``"auto"`` (default: the competition split by batch when the
        file has the competition's batch names, else a seeded random split by ``fractions``),
        ``"competition"``, ``"random"``, ``None`` (every cell trains) or ``{stage: subset}``
        (see :func:`split_subsets`). ``split_description`` says what was chosen.
    fractions
        (train, val, test) shares of the random split.
    seed
        Seed of the random split and of the loaders' orders.
    **loader_options
        Passed to every loader (``modalities``, ``layer``, ``transform``, ``features``,
        ``device``, ...). ``shuffle`` applies to training; validation and test are in file order.
        Features chosen by statistics (``{"top": k}``) are chosen on the training cells, and the
        validation and test loaders deliver the same columns.
    """

    def __init__(
        self,
        data: DataSource | Sequence[DataSource] | MultiomeStore,
        *,
        batch_size: int,
        split: str | Mapping | None = "auto",
        fractions: Sequence[float] = DEFAULT_FRACTIONS,
        seed: int = 0,
        **loader_options,
    ) -> None:
        super().__init__()
        if "subset" in loader_options:
            raise ArgumentError("MultiomeDataModule takes no subset=; choose each stage's cells with split=")
        self.data = data
        self.batch_size = positive_int("batch_size", batch_size)
        self.seed = non_negative_int("seed", seed)
        self.loader_options = loader_options
        if isinstance(data, MultiomeStore):
            self.subsets, self.split_description = split_subsets(data, split, fractions, self.seed)
        else:
            opened = {k: loader_options[k] for k in ("layer", "feature_type_key") if k in loader_options}
            with open_multiome(data, **opened) as store:
                self.subsets, self.split_description = split_subsets(store, split, fractions, self.seed)
        self.loaders: dict[str, LightningLoader] = {}

    def setup(self, stage: str | None = None) -> None:
        """Build the loaders, once: Lightning calls this after the process group exists, so each
        loader takes this rank's share."""
        if self.loaders:
            return
        train = self._loader(
            "train", self.loader_options.get("shuffle", True), self.loader_options.get("features")
        )
        chosen = train.feature_masks
        self.loaders = {"train": train}
        for stage_name in STAGES[1:]:
            if stage_name in self.subsets:
                self.loaders[stage_name] = self._loader(stage_name, False, chosen)

    def _loader(self, stage: str, shuffle, features) -> LightningLoader:
        options = {**self.loader_options, "shuffle": shuffle, "features": features}
        return LightningLoader(
            self.data, batch_size=self.batch_size, seed=self.seed, subset=self.subsets[stage], **options
        )

    def train_dataloader(self) -> LightningLoader:
        self.setup()
        return self.loaders["train"]

    def val_dataloader(self) -> LightningLoader | list:
        """The validation loader, or ``[]`` (Lightning then skips validation) when the split has none."""
        self.setup()
        return self.loaders.get("val", [])

    def test_dataloader(self) -> LightningLoader | list:
        self.setup()
        return self.loaders.get("test", [])

    def state_dict(self) -> dict:
        """The training loader's position (Lightning stores it in every checkpoint)."""
        return {"train": self.loaders["train"].state_dict()} if self.loaders else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if "train" in state_dict:
            self.train_dataloader().load_state_dict(state_dict["train"])
