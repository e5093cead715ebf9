/*
 * pmgsim - run simulator scenarios from the command line.
 *
 *   pmgsim --list
 *   pmgsim --scenario NAME [--seed N] [--nodes N] [--trace]
 *   pmgsim --check [--jobs N]      (the `make check` set, as TAP)
 *
 * Prints PASS/FAIL with the seed, node count and trace hash; on failure, the
 * command line that replays the run. Exit status 0 = pass.
 */
#include "tests/sim/scenarios.h"

#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f, "usage: pmgsim --list\n"
               "       pmgsim --scenario NAME [--seed N] [--nodes N] "
               "[--trace]\n"
               "       pmgsim --check [--jobs N]\n");
}

int main(int argc, char **argv)
{
    const char *name = NULL;
    uint64_t seed = 1;
    size_t nodes = 0;
    bool trace = false, list = false, check = false;
    int jobs = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--list")) {
            list = true;
        } else if (!strcmp(a, "--trace")) {
            trace = true;
        } else if (!strcmp(a, "--check")) {
            check = true;
        } else if (!strcmp(a, "--scenario") && v) {
            name = v;
            i++;
        } else if (!strcmp(a, "--seed") && v) {
            seed = strtoull(v, NULL, 0);
            i++;
        } else if (!strcmp(a, "--nodes") && v) {
            nodes = strtoull(v, NULL, 0);
            i++;
        } else if (!strcmp(a, "--jobs") && v) {
            jobs = atoi(v);
            i++;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (list) {
        for (size_t i = 0; i < sim_n_scenarios; i++) {
            const scenario *sc = &sim_scenarios[i];
            printf("%-14s N=%-4zu %s %s\n", sc->name, sc->nodes,
                   sc->check_seed ? "[check]" : "       ", sc->desc);
        }
        return 0;
    }
    if (check) return scen_check_main(jobs);
    if (!name) {
        usage(stderr);
        return 2;
    }
    const scenario *sc = sim_find_scenario(name);
    if (!sc) {
        fprintf(stderr, "pmgsim: no scenario '%s' (try --list)\n", name);
        return 2;
    }
    if (nodes && nodes < 4) {
        fprintf(stderr, "pmgsim: --nodes must be at least 4\n");
        return 2;
    }
    scen_ctx x = {.seed = seed, .nodes = nodes, .trace = trace,
                  .out = stdout};
    return scen_run(sc, &x);
}
