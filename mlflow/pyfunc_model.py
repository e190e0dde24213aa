"""The MLflow pyfunc of lite-rec, logged as "models from code" (never imported by the library).

Why models from code: a pickled PythonModel would tie every registered version to the exact
class layout and Python that pickled it, and unpickling executes code. Here MLflow stores this
file's *source* with the model and runs it on load; the weights and tables it serves are the
code-free bundle passed as the ``bundle`` artifact (safetensors + Parquet + JSON, hash-checked
on load by :func:`lite_rec.infer.bundle.load_bundle`).

The class stays thin (MLflow's examples/pyfunc habit): ``load_context`` builds the shared
:class:`~lite_rec.infer.recommender.Recommender`, ``predict`` hands the request frame to
:func:`~lite_rec.infer.frames.recommend_frame`, so the pyfunc, the HTTP service and batch scoring
answer identically, with the same input rules and the same errors (:class:`RecommendError`, which
MLflow's scoring server answers with 400). Columns: ``mlflow/signature.json``: ``history`` (item ids
or events ``{"item_id", "ts", "rating"}``), ``k``, ``exclude_history``, ``ignore_unknown`` and
``request_time``. What this model reads besides item ids is ``self.recommender.context_fields``
(also the registered version's ``context_fields`` tag); a row that lacks one of them is refused
with a :class:`~lite_rec.infer.requests.ContextError` naming the field and the model's bundle.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

import mlflow
from lite_rec.infer.frames import recommend_frame
from lite_rec.infer.recommender import Recommender


class LiteRecPyfunc(PythonModel):
    """Top-k next items for each row's ``history`` (raw item ids or events) at its ``request_time``."""

    def load_context(self, context: PythonModelContext) -> None:
        self.recommender = Recommender.from_path(context.artifacts["bundle"])

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return recommend_frame(self.recommender, model_input)  # a RecommendError for anything that is not a request table


mlflow.models.set_model(LiteRecPyfunc())
