"""In-process ONNX Runtime baselines on a repository's own ONNX files, with the session options the
``cpu`` flavour's python-backend host gives each model (:meth:`vmtl.runtime.LocalModel.host_pipeline`),
so that a comparison with the served repository measures serving, not different kernels or thread counts
(the backbone on the runtime and precision its host runs here: :func:`vmtl.runtime_openvino.host_pipeline`).

- shared: :meth:`~vmtl.runtime.LocalModel.host_pipeline`, the trunk once, then the needed heads in stage
  order (what the ensemble runs);
- :class:`IndependentOrt`: K single-task models, each its own trunk session + its head (and the heads of
  its auxiliaries): what a user would deploy without a shared trunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vmtl.runtime import LocalModel
from vmtl.runtime_openvino import host_pipeline


class IndependentOrt:
    """K single-task models: per task its own trunk session and heads, nothing shared between tasks."""

    def __init__(self, repo: LocalModel, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.models = {t: host_pipeline(repo)[0] for t in self.tasks}

    def run(self, video: np.ndarray) -> dict[str, np.ndarray]:
        return {t: self.models[t].run(video, [t])[t] for t in self.tasks}
