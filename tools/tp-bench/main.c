/* SPDX-License-Identifier: MIT */
/* main.c — tp-bench: subcommand dispatch. */
#include "bench.h"

#include "tp-version.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int run_cmd(const bench_opts *o)
{
    switch (o->cmd) {
        case BENCH_CMD_COLLECTIVES: return bench_cmd_collectives(o);
        case BENCH_CMD_GEMM: return bench_cmd_gemm(o);
        case BENCH_CMD_LAYER: return bench_cmd_layer(o);
        case BENCH_CMD_MODEL: return bench_cmd_model(o);
        case BENCH_CMD_PLOT: return bench_cmd_plot(o);
        default: break;
    }
    bench_print_help(stderr, BENCH_CMD_NONE);
    return BENCH_EXIT_USAGE;
}

/* Exit with rc, or BENCH_EXIT_FAIL when standard output was lost (a full
 * disk, a closed pipe). */
static int finish(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "tp-bench: writing standard output failed: %s\n", strerror(errno));
        if (rc == BENCH_EXIT_OK)
            rc = BENCH_EXIT_FAIL;
    }
    if (rc != BENCH_EXIT_OK) {
        /* Skip the libraries' exit handlers after a failure: OpenBLAS's
         * joins worker threads that, out of memory, retry their
         * allocation forever (a hang after the error under ulimit -v). */
        fflush(stderr);
        _exit(rc);
    }
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o;
    char err[512];
    if (bench_parse_args(argc, argv, &o, err, sizeof err) != 0 ||
        bench_opts_validate(&o, err, sizeof err) != 0) {
        fprintf(stderr, "tp-bench: %s\n", err);
        return BENCH_EXIT_USAGE;
    }
    if (o.version) {
        printf("tp-bench %s (git %s)\n", TP_TOOLS_VERSION, TP_TOOLS_REVISION);
        return finish(BENCH_EXIT_OK);
    }
    if (o.note[0])
        fprintf(stderr, "tp-bench: %s\n", o.note);
    if (o.help) {
        bench_print_help(stdout, o.cmd == BENCH_CMD_HELP ? BENCH_CMD_NONE : o.cmd);
        return finish(BENCH_EXIT_OK);
    }
    if (bench_sink_check_paths(o.json_path, o.csv_path, o.out_path, err, sizeof err) != 0) {
        fprintf(stderr, "tp-bench: %s\n", err);
        return BENCH_EXIT_USAGE;
    }
    return finish(run_cmd(&o));
}
