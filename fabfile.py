"""`fab` from the repository root finds its tasks here; the code lives in deploy/ (`fab -l` lists them)."""

from deploy.fabfile import build_image, cancel, chat, fetch_report, logs, setup, stage_data, status, submit_run  # noqa: F401
from deploy.metrics_tasks import metrics_down, metrics_up  # noqa: F401
