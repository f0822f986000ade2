"""The loader's plan, built once: modalities, cells, column layout, transforms, obs columns.

``loader_plan`` builds the immutable :class:`LoaderPlan` from the options; ``layout`` is the
column routing the kernels read; ``transforms`` and ``stats`` prepare per-cell scales and
per-column weights; ``obs`` selects obs columns and cells; ``weights`` resolves sampling
weights over the selected cells.
"""

from gpuload.plan.layout import Layout
from gpuload.plan.loader_plan import ALL, LoaderPlan, build_plan
from gpuload.plan.transforms import Transform
from gpuload.plan.weights import cell_weights

__all__ = ["ALL", "Layout", "LoaderPlan", "Transform", "build_plan", "cell_weights"]
