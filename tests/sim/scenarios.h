/*
 * scenarios.h - simulator scenarios and the code that runs them.
 *
 * A scenario is one small C function that builds a sim, drives it (faults,
 * time) and states what must hold with EXPECT(). It gets the seed and node
 * count from its context, so any run can be replayed from the command line:
 *     tests/sim/pmgsim --scenario NAME --seed N --nodes N [--trace]
 * Adding one: write `static void sc_name(scen_ctx *x)` in scenarios.c and add
 * a row to the table at the end of that file.
 */
#ifndef PMGCM_SIM_SCENARIOS_H
#define PMGCM_SIM_SCENARIOS_H

#include "tests/sim/sim.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

typedef struct scen_ctx {
    uint64_t seed;
    size_t nodes;    /* node count the scenario must use */
    bool trace;      /* print every event (very verbose) */
    FILE *out;       /* "# ..." diagnostics               */
    /* results */
    uint64_t hash;   /* trace hash of the (last) sim run  */
    int failures;
    uint64_t virt_ms;/* virtual time simulated (sum over sims) */
    char first_failure[512];
} scen_ctx;

typedef struct scenario {
    const char *name;
    void (*run)(scen_ctx *x);
    size_t nodes;        /* default node count                           */
    size_t small_nodes;  /* node count under sanitizers/valgrind (0 = same) */
    uint64_t check_seed; /* seed used by `make check`; 0 = not in make check */
    const char *desc;
} scenario;

extern const scenario sim_scenarios[];
extern const size_t sim_n_scenarios;
const scenario *sim_find_scenario(const char *name);

/* Records a failure (and prints it) when cond is false. */
#define EXPECT(x, cond, ...) \
    scen_expect((x), (cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
void scen_expect(scen_ctx *x, bool cond, const char *file, int line,
                 const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Prints a "# " diagnostic line. */
void scen_note(scen_ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Runs one scenario; returns 0 on pass, 1 on fail. Prints the PASS/FAIL line
 * (with seed, node count, trace hash and replay command) to x->out. */
int scen_run(const scenario *sc, scen_ctx *x);

/* True when built with AddressSanitizer or PMGSIM_SMALL=1 is set. */
bool scen_small(void);

/* Runs every scenario with a check_seed as TAP (one point per scenario),
 * `jobs` of them at a time in child processes. Returns the exit status. */
int scen_check_main(int jobs);

#endif
