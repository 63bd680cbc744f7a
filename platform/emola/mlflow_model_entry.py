"""The models-from-code entry of EmoLA's MLflow model (see :mod:`emola.mlflow_model` and :mod:`emola.pyfunc`).

MLflow copies this file into each logged model and runs it when the model loads; it only
names the model object. Nothing imports it.
"""

from mlflow.models import set_model

from emola.pyfunc import EmolaPyfunc

set_model(EmolaPyfunc())
