"""Placement groups an ended job left holding resources are given back; nothing a live owner can use is.

Two more drivers join the session's Ray, each leaves two groups behind and exits; Ray's own rule keeps
all four. Each leaves a detached group, and a group made by a detached actor that still runs. For one
driver that actor is somebody's service; for the other it is named as Train's placement-group cleaner,
the only one of its job left alive: the case tbray releases, standing in for the group a Train
controller made moments before it died, which Ray kept after its job had ended. While a search runs,
its own groups that hold no actor at two checks in a row are released too.
"""

from __future__ import annotations

import json
import subprocess
import sys

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
from ray.util.state import list_placement_groups

from tbray.rayops import placement

LEAVER = """
import json, ray, sys
from ray.util.placement_group import placement_group

ray.init(address=sys.argv[1], log_to_driver=False)

class Maker:
    def make(self):
        group = placement_group([{"CPU": 0.01}])
        ray.get(group.ready())
        return group.id.hex()

# Named as Train's helper, or not; detached, so that it outlives this job as Train's cleaner does.
actor = ray.remote(num_cpus=0)(type(sys.argv[2], (Maker,), {}))
actor = actor.options(name=sys.argv[2], namespace="leaver", lifetime="detached").remote()
detached = placement_group([{"CPU": 0.01}], lifetime="detached")
ray.get(detached.ready())
print(json.dumps({"made_by_actor": ray.get(actor.make.remote()), "detached": detached.id.hex()}))
"""


def _leave(address: str, actor_class: str) -> dict[str, str]:
    """Run a driver job that leaves a group made by a live detached actor and a detached group; their ids."""
    left = subprocess.run([sys.executable, "-c", LEAVER, address, actor_class], capture_output=True, text=True,
                          timeout=300)
    assert left.returncode == 0, left.stderr[-3000:]
    return json.loads(left.stdout.strip().splitlines()[-1])


def _states(address: str) -> dict[str, str]:
    return {g.placement_group_id: g.state for g in list_placement_groups(address=address, limit=10_000)}


def test_only_groups_of_ended_jobs_that_no_live_owner_can_use_are_released(ray_address):
    owned = _leave(ray_address, "Owner")  # a service of somebody else's that may still use its group
    helped = _leave(ray_address, "PlacementGroupCleaner")  # only Train's helper lives on: nobody can use it
    groups = [*owned.values(), *helped.values()]
    try:
        assert {_states(ray_address)[g] for g in groups} == {"CREATED"}  # both jobs ended; Ray kept all four

        assert placement.release_abandoned() == 1
        states = _states(ray_address)
        assert states[helped["made_by_actor"]] == "REMOVED"
        assert {states[g] for g in (owned["made_by_actor"], owned["detached"], helped["detached"])} == {"CREATED"}
        assert placement.release_abandoned() == 0  # nothing twice
    finally:
        for name in ("Owner", "PlacementGroupCleaner"):
            ray.kill(ray.get_actor(name, namespace="leaver"))
        for group in (owned["detached"], helped["detached"]):
            remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group)))


def test_a_group_of_the_search_found_empty_twice_is_released_and_one_in_use_is_kept(ray_address):
    empty = placement_group([{"CPU": 0.01}])  # this process's job stands in for the search's
    used = placement_group([{"CPU": 0.01}])
    ray.get([empty.ready(), used.ready()])

    class Holder:  # defined here, so that Ray ships it by value: its workers can't import this test module
        def ping(self) -> bool:
            return True

    holder = ray.remote(num_cpus=0.01)(Holder).options(
        scheduling_strategy=PlacementGroupSchedulingStrategy(used)).remote()
    ray.get(holder.ping.remote())
    watch = placement.ReleaseUnused(every_s=0)
    try:
        watch.on_step_begin(0, [])  # first seen empty: its actors may be on their way
        assert _states(ray_address)[empty.id.hex()] == "CREATED"
        watch.on_step_begin(1, [])
        states = _states(ray_address)
        assert states[empty.id.hex()] == "REMOVED" and states[used.id.hex()] == "CREATED"
        watch.on_step_begin(2, [])
        assert _states(ray_address)[used.id.hex()] == "CREATED"
    finally:
        ray.kill(holder)
        remove_placement_group(used)
