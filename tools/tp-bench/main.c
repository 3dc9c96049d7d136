/* SPDX-License-Identifier: MIT */
/* main.c — tp-bench: subcommand dispatch. */
#include "bench.h"

#include <stdlib.h>

int main(int argc, char **argv)
{
    bench_opts o;
    char err[512];
    if (bench_parse_args(argc, argv, &o, err, sizeof err) != 0 ||
        bench_opts_validate(&o, err, sizeof err) != 0) {
        fprintf(stderr, "tp-bench: %s\n", err);
        return BENCH_EXIT_USAGE;
    }
    if (o.help) {
        bench_print_help(stdout, o.cmd == BENCH_CMD_HELP ? BENCH_CMD_NONE : o.cmd);
        return BENCH_EXIT_OK;
    }
    switch (o.cmd) {
        case BENCH_CMD_COLLECTIVES: return bench_cmd_collectives(&o);
        case BENCH_CMD_GEMM: return bench_cmd_gemm(&o);
        case BENCH_CMD_LAYER: return bench_cmd_layer(&o);
        case BENCH_CMD_MODEL: return bench_cmd_model(&o);
        case BENCH_CMD_PLOT: return bench_cmd_plot(&o);
        default: break;
    }
    bench_print_help(stderr, BENCH_CMD_NONE);
    return BENCH_EXIT_USAGE;
}
