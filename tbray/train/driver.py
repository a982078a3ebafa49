"""The Tune trial, a Ray Train driver: one Ray Train run named by the trial id, so a restarted trial resumes it.

Kept apart from tbray.search.run on purpose: Tune's trial actor and Ray Train's controller unpickle this
module, so it imports Ray and nothing heavy (no timm, scikit-learn, matplotlib); only the workers
import the training loop. That trims seconds of start-up from every trial.
"""

from __future__ import annotations

import time

from ray import train, tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tbray.train.settings import TrainSettings, TrialParams, TrialSpec


def worker(config: dict) -> None:
    """Runs on each Ray Train worker; the import happens there, not in the trial or the controller."""
    entered = time.time()  # the import's seconds count as start-up in the history (startup_imports_s)
    from tbray.train.worker import worker_loop

    worker_loop(config["spec"], entered)


def trial(config: dict, settings: TrainSettings, refs: dict, storage: str, metric: str, mode: str,
        max_failures: int) -> None:
    """Build and fit the trial's TorchTrainer; TuneReportCallback forwards each epoch's report to Tune."""
    params = TrialParams.from_tune(config)
    # Object refs, not arrays: each worker reads the node's one shared copy.
    spec = TrialSpec(params=params, settings=settings, data=refs["data"][params.image_size], weights=refs["weights"],
                     started=time.time())
    trainer = TorchTrainer(
        worker,
        train_loop_config={"spec": spec},  # Ray Train takes a dict; the spec is the one thing in it
        # One worker never communicates: gloo spares it NCCL's set-up and GPU memory on a GPU it may share
        # with other packed trials. Several workers (DDP, one GPU each) keep Ray's default, NCCL on GPUs.
        torch_config=TorchConfig(backend="gloo") if settings.num_workers == 1 else None,
        scaling_config=train.ScalingConfig(
            num_workers=settings.num_workers, use_gpu=settings.use_gpu,
            resources_per_worker={"CPU": settings.cpus_per_worker, **settings.worker_resources,
                                  **({"GPU": settings.gpus_per_worker} if settings.use_gpu else {})},
        ),
        run_config=train.RunConfig(
            name=f"train-{tune.get_context().get_trial_id()}",
            storage_path=storage,
            callbacks=[TuneReportCallback()],
            failure_config=train.FailureConfig(max_failures=max_failures),
            # The best epoch by the search metric is kept for the final test; the latest always is.
            checkpoint_config=train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric,
                                                     checkpoint_score_order=mode),
        ),
    )
    trainer.fit()


def control_trial(config: dict, refs: dict, **kwargs) -> None:
    """A shortcut-audit trial (tbray.audit.controls): the search's own trial, on the images of the control it is given."""
    trial(config, refs={"data": refs["data"][config["control"]], "weights": refs["weights"]}, **kwargs)
