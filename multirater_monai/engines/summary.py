"""What a finished bundle run prints: where its model, metrics and MLflow run are."""

from __future__ import annotations

import os

__all__ = ["print_run_summary"]


def print_run_summary(
    output_dir: str | os.PathLike,
    tracking_uri: str,
    experiment_name: str,
    run_name: str | None = None,
    enabled: bool = True,
) -> dict:
    """Print (and return) where a run's outputs and its MLflow record are.

    Args:
        output_dir: the folder the run wrote (models for training, metrics for evaluation).
        tracking_uri: the MLflow tracking URI the run logged to.
        experiment_name: MLflow experiment.
        run_name: MLflow run name, if known.
        enabled: whether the run logged to MLflow (when not, the store is not asked).
    """
    summary: dict = {"outputs": os.path.abspath(os.fspath(output_dir))}
    if not enabled:
        summary["mlflow"] = "off"
        print("\n==== run summary ====")
        for key, value in summary.items():
            print(f"{key}: {value}")
        return summary
    summary.update(mlflow_tracking_uri=tracking_uri, mlflow_experiment=experiment_name, mlflow_run=run_name)
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is not None:
            flt = f"attributes.run_name = '{run_name}'" if run_name else ""
            runs = client.search_runs([experiment.experiment_id], filter_string=flt, max_results=1)
            if runs:
                summary["mlflow_run_id"] = runs[0].info.run_id
                summary["metrics"] = dict(runs[0].data.metrics)
    except Exception as e:  # noqa: BLE001 - the summary must never fail a finished run
        summary["mlflow_error"] = str(e)
    print("\n==== run summary ====")
    for key, value in summary.items():
        print(f"{key}: {value}")
    if tracking_uri.startswith("sqlite:///"):
        print(f"browse: mlflow ui --backend-store-uri {tracking_uri}")
    return summary
