/* SPDX-License-Identifier: MIT */
/* tcp-checks.h — correctness checks of every collective (see tcp-checks.c). */
#ifndef TCP_CHECKS_H
#define TCP_CHECKS_H

#include "tcp-harness.h"

/* Run all checks on comm; big != 0 adds a 300007-element all_reduce.
 * Returns TP_OK or the first failure (message in th_error()). */
tp_status tcp_check_all(void *comm, int rank, int size, int big);

#endif
