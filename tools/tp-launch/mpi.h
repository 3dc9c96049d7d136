/* SPDX-License-Identifier: MIT */
/*
 * mpi.h — `tp-launch --nodes K --mpi`: Open MPI's mpirun on the emulated
 * cluster of nodes.h. mpirun runs in node 0 (its namespace and host name);
 * its rsh launcher reaches the other nodes through tp-launch itself in a
 * hidden agent mode, which enters the node (network namespace, a fresh UTS
 * namespace with the node's name) and runs the daemon command there.
 */
#ifndef TPL_MPI_H
#define TPL_MPI_H

#include "nodes.h"

/* The hidden first argument of the agent mode: "--mpi-agent=<job pid>". */
#define TPL_MPI_AGENT_OPT "--mpi-agent="

/* What mpirun gets besides the cluster: the rank count, the user's own
 * mpirun options (from between two "--"), and the program with its args. */
typedef struct tpl_mpi_job {
    long n;
    char **user;
    int n_user;
    char **prog;
} tpl_mpi_job;

/* The user's mpirun options: 0, or -1 after naming one that tp-launch
 * sets itself and cannot share (the rank count, hosts, the launcher). */
int tpl_mpi_check_user(char **user, int n_user);

/* Find Open MPI's mpirun in PATH (and check it is Open MPI's). 0, or -1
 * after saying what is missing. */
int tpl_mpi_find(void);

/* mpirun's argv for job j on cluster c (NULL-terminated, malloc'd; free
 * with tpl_mpi_free_argv), or NULL after saying why. */
char **tpl_mpi_argv(const tpl_cluster *c, const tpl_mpi_job *j);
void tpl_mpi_free_argv(char **argv);

/* The agent mode: argv = {self, "--mpi-agent=JOB", HOST, WORD...}, as
 * Open MPI calls ssh: enter HOST (a node of JOB) and run the WORDs joined
 * by spaces with /bin/sh -c, as sshd would. Returns only on failure (the
 * exit status, after saying why). */
int tpl_mpi_agent(int argc, char **argv);

#endif
