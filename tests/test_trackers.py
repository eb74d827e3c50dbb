"""--report-to: every tracker, each in its local/offline mode, gets the same numbers at the same steps as
metrics.jsonl, the run's config and the doctor's findings; read back from what each one wrote."""

import json
import sys

import pytest

from tiltlm import ConfigError, train

QUIET = lambda *a, **k: None  # noqa: E731


def test_all_trackers_log_what_metrics_jsonl_holds(tiny_assets, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tiltlm-test")
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "tiltlm-test")
    out = tmp_path / "tracked"
    # beta 0.01 with LR 1e-3: the doctor's beta_lr_confusion finding (info) at the start
    train(model=str(tiny_assets / "model"), train_dataset=str(tiny_assets / "train.jsonl"),
          eval_dataset=str(tiny_assets / "eval6.jsonl"), output_dir=str(out), max_steps=3, eval_steps=2,
          learning_rate=1e-3, beta=0.01, per_device_train_batch_size=4, progress=False, seed=0,
          ref_cache_dir=str(tmp_path / "cache"), report_to=["tensorboard", "wandb", "mlflow", "trackio"], log=QUIET)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "eval/loss" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3] and [r["step"] for r in eval_recs] == [2, 3]
    expected = {(key, r["step"]): r[key] for r in records for key in ("loss", "rewards/margins", "eval/loss",
                                                                         "eval/rewards/accuracies") if key in r}
    finding = json.loads((out / "doctor.jsonl").read_text().splitlines()[0])
    assert finding["check"] == "beta_lr_confusion"

    # TensorBoard: the event files under RUN_DIR/tensorboard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    got = {(key, e.step): e.value for key, _ in expected for e in acc.Scalars(key)}
    assert got == pytest.approx(expected, abs=1e-6)
    (text,) = acc.Tensors("doctor/beta_lr_confusion/text_summary")  # add_text is stored as a string tensor
    assert text.step == 0 and text.tensor_proto.string_val[0].decode().startswith("[info] beta=0.01 is small")

    # W&B offline: the run file under RUN_DIR/wandb
    from wandb_offline import read_offline_run

    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    wb = read_offline_run(run_file)
    got = {(key, step): row[key] for step, row in wb["history"].items() for key, _ in expected if key in row}
    assert got == pytest.approx(expected, abs=1e-6)
    assert wb["config"]["beta"] == 0.01 and wb["config"]["loss_type"] == ["sigmoid"]
    assert wb["summary"]["doctor/beta_lr_confusion"].startswith("[info] beta=0.01 is small")
    assert "doctor:beta_lr_confusion" in wb["tags"]

    # MLflow: the sqlite store, through its client
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiltlm-test").experiment_id])
    got = {(key, m.step): m.value for key, _ in expected for m in client.get_metric_history(run.info.run_id, key)}
    assert got == pytest.approx(expected, abs=1e-6)
    assert run.data.params["beta"] == "0.01" and run.data.params["max_steps"] == "3"
    assert run.data.tags["doctor.beta_lr_confusion"].startswith("[info] beta=0.01 is small")
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"

    # Trackio: its local SQLite database under TRACKIO_DIR
    from trackio import SQLiteStorage

    logs = SQLiteStorage.get_logs("tiltlm-test", "tracked")
    got = {(key, row["step"]): row[key] for row in logs for key, _ in expected if key in row}
    assert got == pytest.approx(expected, abs=1e-6)
    assert SQLiteStorage.get_run_config("tiltlm-test", "tracked")["beta"] == 0.01
    alerts = SQLiteStorage.get_alerts("tiltlm-test", run_name="tracked")
    assert [a["title"] for a in alerts] == ["doctor: beta_lr_confusion"]


def test_report_to_is_checked_like_a_flag(tiny_assets, tmp_path, monkeypatch):
    opts = dict(model=str(tiny_assets / "model"), train_dataset=str(tiny_assets / "train.jsonl"),
                output_dir=str(tmp_path / "o"), log=QUIET)
    with pytest.raises(ConfigError, match="unknown tracker 'wanb' .*did you mean 'wandb'"):
        train(report_to="wanb", **opts)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without mlflow gives `import mlflow`
    with pytest.raises(ConfigError, match=r"--report-to mlflow needs the 'mlflow' package.*pip install mlflow"):
        train(report_to="tensorboard,mlflow", **opts)
    assert not (tmp_path / "o").exists()  # refused before any work
