/*
 * runner.c - runs scenarios: one at a time for pmgsim, or all of the
 * `make check` set as TAP, each in its own child process (a crash or hang in
 * one cannot take the others down), `jobs` at a time.
 */
#include "tests/sim/scenarios.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

void scen_expect(scen_ctx *x, bool cond, const char *file, int line,
                 const char *expr, const char *fmt, ...)
{
    if (cond) return;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (!x->failures)
        snprintf(x->first_failure, sizeof(x->first_failure), "%s", msg);
    x->failures++;
    if (x->out) {
        fprintf(x->out, "# FAILED %s:%d: %s\n#   (%s)\n", file, line, msg,
                expr);
        fflush(x->out);
    }
}

void scen_note(scen_ctx *x, const char *fmt, ...)
{
    if (!x->out) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("# ", x->out);
    vfprintf(x->out, fmt, ap);
    fputc('\n', x->out);
    va_end(ap);
    fflush(x->out);
}

bool scen_small(void)
{
#if defined(__SANITIZE_ADDRESS__)
    return true;
#else
    const char *e = getenv("PMGSIM_SMALL");
    return e && *e && strcmp(e, "0") != 0;
#endif
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int scen_run(const scenario *sc, scen_ctx *x)
{
    if (!x->nodes)
        x->nodes = scen_small() && sc->small_nodes ? sc->small_nodes
                                                   : sc->nodes;
    double t0 = mono();
    sc->run(x);
    double real = mono() - t0;
    if (x->out) {
        fprintf(x->out, "%s %s seed=%llu nodes=%zu hash=%016llx "
                        "virtual=%.1fs real=%.2fs\n",
                x->failures ? "FAIL" : "PASS", sc->name,
                (unsigned long long)x->seed, x->nodes,
                (unsigned long long)x->hash, x->virt_ms / 1000.0, real);
        if (x->failures)
            fprintf(x->out, "replay: tests/sim/pmgsim --scenario %s --seed "
                            "%llu --nodes %zu [--trace]\n",
                    sc->name, (unsigned long long)x->seed, x->nodes);
        fflush(x->out);
    }
    return x->failures ? 1 : 0;
}

/* ---- TAP over child processes ------------------------------------------------ */

typedef struct job {
    const scenario *sc;
    pid_t pid;
    int fd; /* captured output */
    int status;
    bool done;
} job;

static void launch(job *j)
{
    FILE *tf = tmpfile();
    if (!tf) {
        j->done = true;
        j->status = -1;
        j->fd = -1;
        return;
    }
    j->fd = dup(fileno(tf));
    fclose(tf);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        const char *to = getenv("PMGSIM_TIMEOUT");
        alarm(to ? (unsigned)atoi(to) : 900);
        FILE *out = fdopen(dup(j->fd), "w");
        scen_ctx x = {.seed = j->sc->check_seed, .out = out};
        int rc = scen_run(j->sc, &x);
        fclose(out);
        exit(rc); /* not _exit: LeakSanitizer runs at exit */
    }
    if (pid < 0) {
        j->done = true;
        j->status = -1;
        return;
    }
    j->pid = pid;
}

static void report(int n, job *j)
{
    char buf[4096];
    char last[512] = "";
    if (j->fd >= 0) {
        lseek(j->fd, 0, SEEK_SET);
        FILE *f = fdopen(j->fd, "r");
        while (f && fgets(buf, sizeof(buf), f)) {
            if (buf[0] == '#') {
                fputs(buf, stdout);
            } else {
                printf("# %s", buf);
                if (!strncmp(buf, "PASS ", 5) || !strncmp(buf, "FAIL ", 5))
                    snprintf(last, sizeof(last), "%.500s", buf + 5);
            }
        }
        if (f) fclose(f);
    }
    bool ok = j->status == 0;
    if (j->status > 0 && WIFSIGNALED(j->status))
        printf("# killed by signal %d (replay: tests/sim/pmgsim --scenario %s "
               "--seed %llu)\n", WTERMSIG(j->status), j->sc->name,
               (unsigned long long)j->sc->check_seed);
    else if (j->status > 0)
        ok = WIFEXITED(j->status) && WEXITSTATUS(j->status) == 0;
    size_t l = strlen(last);
    if (l && last[l - 1] == '\n') last[l - 1] = 0;
    printf("%s %d - %s\n", ok ? "ok" : "not ok", n,
           last[0] ? last : j->sc->name);
    fflush(stdout);
}

int scen_check_main(int jobs)
{
    job js[64];
    size_t nj = 0;
    for (size_t i = 0; i < sim_n_scenarios && nj < 64; i++) {
        if (!sim_scenarios[i].check_seed) continue;
        memset(&js[nj], 0, sizeof(js[nj]));
        js[nj].sc = &sim_scenarios[i];
        js[nj].fd = -1;
        nj++;
    }
    if (jobs < 1) jobs = 1;
    printf("1..%zu\n", nj);
    fflush(stdout);
    size_t next = 0, reported = 0;
    int running = 0, failed = 0;
    while (reported < nj) {
        while (running < jobs && next < nj) {
            launch(&js[next]);
            if (!js[next].done) running++;
            next++;
        }
        while (reported < nj && js[reported].done) {
            report((int)reported + 1, &js[reported]);
            if (js[reported].status != 0) failed++;
            reported++;
        }
        if (reported >= nj) break;
        if (!running) continue;
        int st;
        pid_t p = wait(&st);
        if (p < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (size_t i = 0; i < nj; i++) {
            if (js[i].pid == p && !js[i].done) {
                js[i].done = true;
                js[i].status = st;
                if (st == 0) js[i].status = 0;
                running--;
            }
        }
    }
    return failed ? 1 : 0;
}
