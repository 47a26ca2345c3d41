#!/bin/sh
# TaskProlog of the test bed (slurm.conf): Slurm runs it for every task,
# after the plugin put the task into its image, and sets each
# `export NAME=VALUE` it prints in the task's environment. Configured on
# every Slurm series: 24.05.5-24.11.6 break it once a task changed mount
# namespace (Slurm ticket 22853; README, "Slurm versions").
echo "export SHOAL_TESTBED_TASK_PROLOG=ran"
