#!/bin/sh
# TaskProlog of the test bed (slurm.conf): Slurm runs it for every task,
# after the plugin put the task into its image, and sets each
# `export NAME=VALUE` it prints in the task's environment. Configured on
# every Slurm series; tests/slurm_versions.rs checks that it runs inside
# image tasks, also on 24.11.5 (Slurm ticket 22853; README, "Slurm versions").
echo "export SHOAL_TESTBED_TASK_PROLOG=ran"
