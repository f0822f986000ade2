"""A reference multimodal VAE for paired GEX + ATAC cells, trained on gpuload batches.

Each modality has its own encoder, giving a Gaussian posterior over a shared latent ``z``. The
joint posterior is their product of experts (PoE) together with the standard-normal prior.
The ELBO decodes BOTH modalities from each of the three posteriors (joint, GEX-only and
ATAC-only), so the cross terms (ATAC from the GEX posterior and GEX from the ATAC posterior)
force either modality alone to land in the same place as the pair. That is what makes
cross-modal prediction and matching work.

Likelihoods: negative binomial on raw GEX counts (or Gaussian on log-normalized GEX) and
Bernoulli on binarized ATAC. Decoders see the batch; encoders do not, so the latent space is
encouraged to be batch-free.

Inputs may be dense or sparse CSR (``MultiomeLoader(output="sparse_csr")``): an encoder's first
layer is then a sparse x dense product, whose cost scales with the stored values rather than the
width; the likelihoods read the targets densified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Where the competition's GEX size factors live in obs (the BMMC file, then the task files).
SIZE_FACTOR_KEYS = ("GEX_size_factors", "size_factors")
# The GEX encoder sees counts per 10,000 (scanpy's normalize_total target), then log1p.
COUNTS_PER_CELL = 1e4
LIKELIHOODS = ("nb", "gaussian")

Posterior = tuple[Tensor, Tensor]  # (mean, variance), each [B, latent_dim]


def size_factors_of(batch: dict) -> Tensor:
    """Per-cell GEX size factors of a loader batch (one of ``SIZE_FACTOR_KEYS`` in its obs)."""
    for key in SIZE_FACTOR_KEYS:
        if key in batch["obs"]:
            return batch["obs"][key]
    raise KeyError(f"the batch has no GEX size factors; load one of {SIZE_FACTOR_KEYS} as obs_keys")


def log_normalize(counts: Tensor, size_factors: Tensor) -> Tensor:
    """The competition's GEX values: ``ln(1 + counts / size_factor)``."""
    return torch.log1p(counts / size_factors[:, None])


def is_sparse(x: Tensor) -> bool:
    return x.layout == torch.sparse_csr


def as_dense(x: Tensor) -> Tensor:
    """A dense view of a loader matrix (sparse CSR batches are densified)."""
    return x.to_dense() if is_sparse(x) else x


def library_sizes(counts: Tensor) -> Tensor:
    """Each cell's total count, [B] (dense or sparse CSR counts)."""
    if is_sparse(counts):
        return torch.segment_reduce(counts.values(), "sum", offsets=counts.crow_indices())
    return counts.sum(-1)


def _encoder_input(counts: Tensor) -> Tensor:
    """What the GEX encoder sees: log1p of counts per 10,000, so depth does not move ``z``.
    Sparse CSR counts stay sparse (log1p keeps zeros zero)."""
    scale = COUNTS_PER_CELL / library_sizes(counts).clamp_min(1.0)
    if not is_sparse(counts):
        return torch.log1p(counts * scale[:, None])
    crow, col = counts.crow_indices(), counts.col_indices()
    row_of_value = torch.repeat_interleave(scale, crow.diff())
    values = torch.log1p(counts.values() * row_of_value)
    return torch.sparse_csr_tensor(crow, col, values, counts.shape)


def product_of_experts(experts: list[Posterior]) -> Posterior:
    """Combine Gaussian experts with the N(0, I) prior: precisions add, means are
    precision-weighted.

    For experts ``N(m_k, v_k)`` and the prior ``N(0, 1)``, the product is ``N(m, v)`` with
    ``1 / v = 1 + sum_k 1 / v_k`` and ``m = v * sum_k m_k / v_k``.
    """
    inverse = [1.0 / var for _, var in experts]
    scaled = [mean / var for mean, var in experts]
    precision = 1.0 + sum(inverse[1:], inverse[0])
    weighted = sum(scaled[1:], scaled[0])
    return weighted / precision, 1.0 / precision


def kl_to_prior(posterior: Posterior) -> Tensor:
    """KL(N(m, v) || N(0, I)) per cell, summed over latent dimensions."""
    mean, var = posterior
    return 0.5 * (var + mean.square() - 1.0 - var.log()).sum(-1)


def negative_binomial_log_prob(x: Tensor, log_mean: Tensor, log_theta: Tensor) -> Tensor:
    """log NB(x; mean, inverse dispersion theta), computed from logs for stability."""
    theta = log_theta.exp()
    log_theta_mean = torch.logaddexp(log_theta, log_mean)  # log(theta + mean)
    return (
        theta * (log_theta - log_theta_mean)
        + x * (log_mean - log_theta_mean)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1.0)
    )


class _Encoder(nn.Module):
    """x -> N(mean, variance) over the latent space; x dense or sparse CSR."""

    def __init__(self, n_in: int, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.first = nn.Linear(n_in, hidden)
        self.body = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
        )
        self.mean = nn.Linear(hidden, latent_dim)
        self.log_var = nn.Linear(hidden, latent_dim)

    def forward(self, x: Tensor) -> Posterior:
        # A sparse x dense product touches only the weight rows of stored values.
        first = torch.sparse.mm(x, self.first.weight.t()) + self.first.bias if is_sparse(x) else self.first(x)
        h = self.body(first)
        # Clamped so that a confident expert cannot drown the PoE in an infinite precision.
        return self.mean(h), self.log_var(h).clamp(-8.0, 8.0).exp()


class _Decoder(nn.Module):
    """(z, batch) -> per-feature parameters.

    The batch one-hot enters the first layer; ``one_hot @ W`` is an embedding lookup, so it is
    written as one. It starts at zero, so a batch never seen in training (whose row is never
    updated) adds nothing: such cells are decoded as a batch-neutral cell.
    """

    def __init__(self, latent_dim: int, n_batches: int, hidden: int, n_out: int) -> None:
        super().__init__()
        self.latent = nn.Linear(latent_dim, hidden)
        self.batch = nn.Embedding(n_batches, hidden)
        nn.init.zeros_(self.batch.weight)
        self.body = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_out),
        )

    def forward(self, z: Tensor, batch_codes: Tensor) -> Tensor:
        return self.body(self.latent(z) + self.batch(batch_codes))


class MultiomeVAE(nn.Module):
    """Paired GEX + ATAC VAE with a product-of-experts joint posterior.

    Parameters
    ----------
    n_genes, n_peaks
        Widths of the GEX and ATAC inputs.
    n_batches
        Number of batch categories (the codes in ``batch["obs_codes"]["batch"]``).
    latent_dim, hidden
        Size of the shared latent space and of every hidden layer.
    gex_likelihood
        ``"nb"``: negative binomial on raw counts, mean = softmax over genes * library size,
        with a learned inverse dispersion per gene. ``"gaussian"``: Gaussian on the
        log-normalized GEX ``ln(1 + counts / size_factor)``, with a learned scale per gene.

    Inputs are raw GEX counts and binarized ATAC, as ``MultiomeLoader(layer="counts",
    transform={"GEX": None, "ATAC": "binarize"})`` delivers them.
    """

    def __init__(
        self,
        n_genes: int,
        n_peaks: int,
        n_batches: int,
        latent_dim: int = 16,
        hidden: int = 256,
        gex_likelihood: str = "nb",
    ) -> None:
        super().__init__()
        if gex_likelihood not in LIKELIHOODS:
            raise ValueError(f"gex_likelihood must be one of {LIKELIHOODS}, got {gex_likelihood!r}")
        self.gex_likelihood = gex_likelihood
        self.gex_encoder = _Encoder(n_genes, hidden, latent_dim)
        self.atac_encoder = _Encoder(n_peaks, hidden, latent_dim)
        self.gex_decoder = _Decoder(latent_dim, n_batches, hidden, n_genes)
        self.atac_decoder = _Decoder(latent_dim, n_batches, hidden, n_peaks)
        # NB: log inverse dispersion; Gaussian: log standard deviation. One per gene.
        self.gex_log_scale = nn.Parameter(torch.zeros(n_genes))

    # -- encoding -----------------------------------------------------------------------------
    def posteriors(self, gex: Tensor, atac: Tensor) -> dict[str, Posterior]:
        """The GEX-only, ATAC-only and joint (PoE) posteriors of raw ``gex`` counts and binary
        ``atac``."""
        gex_post = self.gex_encoder(_encoder_input(gex))
        atac_post = self.atac_encoder(atac)
        return {
            "joint": product_of_experts([gex_post, atac_post]),
            "gex": gex_post,
            "atac": atac_post,
        }

    @torch.no_grad()
    def embed(self, gex: Tensor | None, atac: Tensor | None, which: str = "joint") -> Tensor:
        """Posterior mean of ``z``: from both modalities (``"joint"``) or from one alone.

        The modality that ``which`` does not use may be ``None``.
        """
        if which == "gex" and gex is not None:
            return self.gex_encoder(_encoder_input(gex))[0]
        if which == "atac" and atac is not None:
            return self.atac_encoder(atac)[0]
        if which == "joint" and gex is not None and atac is not None:
            return self.posteriors(gex, atac)["joint"][0]
        raise ValueError(
            f"which must be 'joint' (with both modalities), 'gex' or 'atac' (with that modality), "
            f"got which={which!r} with gex {'None' if gex is None else 'given'}, "
            f"atac {'None' if atac is None else 'given'}"
        )

    # -- the ELBO -----------------------------------------------------------------------------
    def _gex_log_prob(self, z: Tensor, batch_codes: Tensor, counts: Tensor, size_factors) -> Tensor:
        out = self.gex_decoder(z, batch_codes)
        if self.gex_likelihood == "nb":
            library = counts.sum(-1, keepdim=True).clamp_min(1.0)
            log_mean = F.log_softmax(out, -1) + library.log()
            return negative_binomial_log_prob(counts, log_mean, self.gex_log_scale).sum(-1)
        target = log_normalize(counts, size_factors)
        normal = torch.distributions.Normal(out, self.gex_log_scale.exp())
        return normal.log_prob(target).sum(-1)

    def _atac_log_prob(self, z: Tensor, batch_codes: Tensor, atac: Tensor) -> Tensor:
        logits = self.atac_decoder(z, batch_codes)
        return -F.binary_cross_entropy_with_logits(logits, atac, reduction="none").sum(-1)

    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss (see :meth:`loss`); ``forward`` so that DistributedDataParallel wraps it."""
        return self.loss(batch)

    def loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO per cell, averaged over the batch, and its terms (detached, so the
        caller decides when to pay for a device sync).

        For each posterior q in (joint, gex, atac): reconstruct GEX and ATAC from one
        reparameterized sample ``z ~ q``, and add KL(q || prior).

        Parameters
        ----------
        batch
            A :class:`gpuload.MultiomeLoader` batch: ``"GEX"`` raw counts, ``"ATAC"`` binary
            (dense or sparse CSR), ``batch["obs_codes"]["batch"]``, and (Gaussian likelihood
            only) the size factors in ``batch["obs"]``.
        """
        gex, atac = batch["GEX"], batch["ATAC"]
        gex_target, atac_target = as_dense(gex), as_dense(atac)
        batch_codes = batch["obs_codes"]["batch"]
        size_factors = size_factors_of(batch) if self.gex_likelihood == "gaussian" else None
        terms: dict[str, Tensor] = {}
        for name, (mean, var) in self.posteriors(gex, atac).items():
            z = mean + var.sqrt() * torch.randn_like(mean)
            gex_log_prob = self._gex_log_prob(z, batch_codes, gex_target, size_factors)
            terms[f"gex_from_{name}"] = -gex_log_prob.mean()
            terms[f"atac_from_{name}"] = -self._atac_log_prob(z, batch_codes, atac_target).mean()
            terms[f"kl_{name}"] = kl_to_prior((mean, var)).mean()
        values = list(terms.values())
        return sum(values[1:], values[0]), {name: value.detach() for name, value in terms.items()}

    # -- cross-modal prediction ---------------------------------------------------------------
    @torch.no_grad()
    def predict_atac_from_gex(self, gex_counts: Tensor, batch_codes: Tensor) -> Tensor:
        """P(peak open) for each cell, decoded from the mean of the GEX-only posterior."""
        z = self.embed(gex_counts, None, which="gex")
        return torch.sigmoid(self.atac_decoder(z, batch_codes))

    @torch.no_grad()
    def predict_gex_from_atac(
        self,
        atac: Tensor,
        batch_codes: Tensor,
        library: Tensor | None = None,
        size_factors: Tensor | None = None,
        n_samples: int = 32,
    ) -> Tensor:
        """Expected log-normalized GEX, E[ln(1 + counts / size_factor)], from the ATAC-only
        posterior mean.

        Gaussian likelihood: the decoder's mean, which is already that expectation; ``library``
        and ``size_factors`` are not needed. NB likelihood: the expectation is not
        ``ln(1 + mean / s)`` (log is concave, so that overshoots low counts), so it is
        estimated from ``n_samples`` NB draws with mean ``softmax * library`` and then
        normalized by ``size_factors``.
        """
        z = self.embed(None, atac, which="atac")
        out = self.gex_decoder(z, batch_codes)
        if self.gex_likelihood == "gaussian":
            return out
        if library is None or size_factors is None:
            raise ValueError("the NB model needs each cell's library size and size factor")
        log_mean = F.log_softmax(out, -1) + library[:, None].log()
        # torch's NB counts successes at odds mean / theta: logits = log(mean) - log(theta).
        log_theta = self.gex_log_scale
        counts = torch.distributions.NegativeBinomial(log_theta.exp(), logits=log_mean - log_theta)
        total = torch.zeros_like(log_mean)
        for _ in range(n_samples):
            total += log_normalize(counts.sample(), size_factors)
        return total / n_samples
