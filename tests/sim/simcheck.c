/*
 * simcheck - the simulator scenarios of `make check`, as TAP: one test point
 * per scenario, run in child processes two at a time (PMGSIM_JOBS).
 * Under AddressSanitizer, or with PMGSIM_SMALL=1, scenarios use their small
 * node counts.
 */
#include "tests/sim/scenarios.h"

#include <stdlib.h>

int main(void)
{
    const char *j = getenv("PMGSIM_JOBS");
    return scen_check_main(j ? atoi(j) : 2);
}
