"""Thin entry points of the pipeline stages and Ray jobs (``python -m jobs.<name>``).

Jobs print stage lines, progress and results; per-file progress bars of the Hugging Face
libraries (loading and writing weights) and of MLflow's artifact transfers would only fill
their logs, so they are off for the job and for the Ray workers it starts (which inherit its
environment). Set ``HF_HUB_DISABLE_PROGRESS_BARS=0`` or
``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true`` to see them.
"""

import os

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
