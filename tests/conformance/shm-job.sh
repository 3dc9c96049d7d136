#!/bin/sh
# SPDX-License-Identifier: MIT
# shm-job.sh TP-LAUNCH N PROG [ARGS...]: run PROG as N shm ranks under
# tp-launch with a TP_JOB_ID of its own (unless tp-launch or the caller
# already provides one).
launch=$1 n=$2
shift 2
TP_JOB_ID=${TP_JOB_ID:-conf-$$-$(date +%s%N)}
export TP_JOB_ID
exec "$launch" -n "$n" "$@"
