"""Placement groups that ended searches leave behind, given back so that the next trial can start.

Ray Train V2 reserves each run's workers in a placement group made by its controller actor. Two ways
were seen here for such a group to outlive what it was made for:

- A Train worker killed: its controller made a new group to restart the workers, died two seconds
  later, and the group stayed CREATED after its search's job had ended (Ray's GCS log of the test
  session that stalled: the group registered at 09:55:43.6, its job marked finished at 09:55:48, the
  group never removed). Train's cleaner actor only learns of a group once its workers have started.
  A driver killed with SIGKILL left two groups behind the same way.
- Train's cleaner can lag behind a finished run (minutes, once, after a resumed search).

On 2 CPUs two such groups hold every CPU and every later trial waits forever. Only the state API's
public view is used: a group's state, creator job and whether it is detached, and the group each actor
lives in.
"""

from __future__ import annotations

import time

import ray
from ray import tune
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.state import list_actors, list_jobs, list_placement_groups
from ray.util.state.exception import RayStateApiException

from tbray.errors import UserError

HOLDING = ("CREATED", "PENDING", "RESCHEDULING")  # the states in which a group holds or waits for resources
# A state API listing returns 100 entries unless told otherwise, and refuses more than 10,000.
LIMIT = 10_000
# Detached actors that Ray Train starts (per run, or once per cluster); none makes a placement group.
TRAIN_HELPERS = {"PlacementGroupCleaner", "TrainStateActor", "_AutoscalingCoordinatorActor"}


def _address() -> str:
    # This job's own cluster by address: with two local Rays on one machine, no address is ambiguous.
    return ray.get_runtime_context().gcs_address


def _remove(group_ids: set[str]) -> int:
    for group_id in group_ids:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group_id)))
    return len(group_ids)


def release_leftover() -> int:
    """Remove the placement groups this job's finished trials still hold; returns how many.

    Called only once every trial of this search has ended, so none of them can still be in use: the final
    evaluation must not wait on resources that no trial will use again.
    """
    job = ray.get_runtime_context().get_job_id()
    return _remove({group.placement_group_id for group in list_placement_groups(address=_address(), limit=LIMIT)
                    if group.state in HOLDING and group.creator_job_id == job})


def release_abandoned() -> int:
    """Remove placement groups whose job has ended and that nothing alive can use; returns how many.

    By Ray's own rule a group that is not detached lives as long as the job, or the detached actor, that
    made it. So a group is released only when it is not detached, its job has ended, and that job left
    no detached actor alive that could have made it (Train's own helpers aside). Groups of jobs still
    running, of other people's services and detached groups are never touched.
    """
    address = _address()
    try:
        jobs = list_jobs(address=address, limit=LIMIT)
    except RayStateApiException:
        raise UserError(f"the Ray cluster at {address} has no dashboard (Ray's state API): Ray Train frees a "
                        "stopped trial's resources through it; start its head with ray[default] and the dashboard")
    ended = {job.job_id for job in jobs if job.job_id and job.status.is_terminal()}
    if not ended:
        return 0
    owners_alive = {actor.job_id for actor in list_actors(address=address, filters=[("state", "!=", "DEAD")],
                                                          limit=LIMIT)
                    if actor.class_name not in TRAIN_HELPERS}
    groups = list_placement_groups(address=address, detail=True, limit=LIMIT)
    return _remove({group.placement_group_id for group in groups
                    if group.state in HOLDING and not group.is_detached and group.creator_job_id in ended
                    and group.creator_job_id not in owners_alive})


def unused(job: str) -> set[str]:
    """Ids of the job's placement groups that are ready but hold no actor, running or waiting to start."""
    address = _address()
    used = {actor.placement_group_id for actor in list_actors(
        address=address, filters=[("job_id", "=", job), ("state", "!=", "DEAD")], detail=True, limit=LIMIT)}
    return {group.placement_group_id for group in list_placement_groups(
        address=address, filters=[("creator_job_id", "=", job), ("state", "=", "CREATED")], limit=LIMIT)} - used


class ReleaseUnused(tune.Callback):
    """While the search runs: its own placement groups found empty at two checks in a row are released.

    A group is made and filled in one go (Tune's trial actor, Train's workers right after `ready()`) and
    removed when its run ends, so one that held no actor a whole interval apart is one whose maker died
    (a Train worker killed here: its controller made a new group, then died with it). Without this it
    would hold its CPUs or GPUs until the search ends, and two of them stall a 2-CPU search.
    """

    def __init__(self, every_s: float = 60.0):  # far above the milliseconds between a group and its actors
        self.every_s = every_s
        self._checked = float("-inf")
        self._empty: set[str] = set()  # found unused at the last check

    def on_step_begin(self, iteration: int, trials: list, **info):
        if time.monotonic() - self._checked < self.every_s:
            return
        self._checked = time.monotonic()
        try:
            now = unused(ray.get_runtime_context().get_job_id())
        except RayStateApiException:  # the dashboard busy or restarting: the trials go on, the next check sees
            return
        stale = now & self._empty
        self._empty = now - stale
        if released := _remove(stale):
            print(f"tbray: released {released} placement group(s) that no trial of this search used any more")
