"""How a sweep chooses its parallelism when the command line does not: jobs, vmap, the cores of each child."""

import os

import pytest

from gptjax.cli import parser
from gptjax.sweep import (
    Parallelism,
    choose_parallelism,
    cpu_slots,
    machine,
    resolve_parallelism,
)


@pytest.mark.parametrize(("cores", "device", "jobs"), [(1, "cpu", 1), (2, "cpu", 2), (16, "cpu", 16),
                                                        (16, "gpu", 1), (96, "tpu", 1)])
def test_a_cpu_runs_a_child_per_core_an_accelerator_one_and_both_vmap(cores, device, jobs):
    chosen = choose_parallelism(cores, device)
    assert (chosen.jobs, chosen.vmap) == (jobs, True)
    assert (f"{cores}-core CPU" if device == "cpu" else device.upper()) in chosen.why


def test_the_machine_is_read_from_jax_platforms_else_from_device_files(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    for platforms, device in (("cpu", "cpu"), ("cuda,cpu", "gpu"), ("tpu", "tpu"), (" cpu , cuda", "cpu")):
        monkeypatch.setenv("JAX_PLATFORMS", platforms)
        assert machine() == (3, device)


def test_what_the_command_line_gives_wins_and_the_line_says_which_was_chosen():
    chosen = Parallelism(4, True, "4-core CPU: 4 job(s), one core each, vmapped groups")
    jobs, vmap, line = resolve_parallelism(None, None, chosen)
    assert (jobs, vmap) == (4, True)
    assert line == ("parallelism: 4 job(s), one vmapped program per group of variants (jobs and vmap chosen "
                    "for this machine, 4-core CPU: 4 job(s), one core each, vmapped groups; --jobs N and "
                    "--vmap/--no-vmap choose)")
    assert resolve_parallelism(1, None, chosen)[:2] == (1, True)
    assert "(vmap chosen for this machine" in resolve_parallelism(1, None, chosen)[2]
    assert resolve_parallelism(None, False, chosen)[:2] == (4, False)
    assert resolve_parallelism(2, False, chosen) == (2, False, "")  # nothing chosen, nothing said
    # Split across hosts, a vmapped group would leave hosts idle: no vmap unless asked.
    jobs, vmap, line = resolve_parallelism(None, None, chosen, split=True)
    assert (jobs, vmap) == (4, False) and "vmap off: the sweep is split across hosts" in line
    assert resolve_parallelism(None, True, chosen, split=True)[:2] == (4, True)
    # The command line leaves both unset unless given, for `sweep` and `experiment` alike.
    for command in ("sweep", "experiment"):
        args = parser().parse_args([command, "x"])
        assert (args.jobs, args.vmap) == (None, None)
        args = parser().parse_args([command, "x", "--jobs", "3", "--no-vmap"])
        assert (args.jobs, args.vmap) == (3, False)


def test_each_child_gets_its_own_equal_share_of_the_cores():
    assert cpu_slots(2, [0, 1]) == [{0}, {1}]
    assert cpu_slots(2, [4, 5, 6, 7, 0, 1, 2, 3]) == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    assert cpu_slots(3, range(8)) == [{0, 1}, {2, 3}, {4, 5}]  # cores 6 and 7 left out: equal shares
    assert cpu_slots(1, range(8)) is None  # one job: every core, XLA's own threads
    assert cpu_slots(3, [0, 1]) is None  # more jobs than cores: no confinement possible
