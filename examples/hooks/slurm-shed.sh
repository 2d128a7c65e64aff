#!/bin/sh
# powerctl shed hook for Slurm: suspend or resume the jobs of one workload class.
#
#   slurm-shed.sh suspend|resume CLASS
#
# powerctl runs hooks without a shell, as an argv list; this script is the one place a shell runs,
# and it only sees the two arguments above. Mapping used here: the jobs of class CLASS are the jobs
# in the Slurm partition of the same name. Adapt the squeue filter to your site (--qos, --account,
# --name, a job comment ...). `scontrol suspend` needs SlurmUser or root (sudo rule, or run powerctl's
# hooks through a small setuid-free helper with that right).
#
# Suspended jobs keep their GPU memory but stop drawing compute power (the GPU falls to idle power).
# For long training jobs prefer checkpoint-and-requeue (`scontrol requeue`) if they checkpoint often.
set -eu
action=${1:?usage: slurm-shed.sh suspend|resume CLASS}
class=${2:?usage: slurm-shed.sh suspend|resume CLASS}
case "$action" in
  suspend) state=RUNNING ;;
  resume)  state=SUSPENDED ;;
  *) echo "slurm-shed.sh: action must be suspend or resume, got '$action'" >&2; exit 2 ;;
esac
jobs=$(squeue --noheader --partition="$class" --states="$state" --format=%A)
n=0
for job in $jobs; do
  scontrol "$action" "$job"
  n=$((n + 1))
done
echo "slurm-shed.sh: $action $n job(s) of class $class"
