/*
 * tap.h - a tiny TAP producer for pmgcm's C tests (header only).
 *
 *   static void test_x(void) { CHECK(1 + 1 == 2); CHECK_EQ_INT(a, b); }
 *   int main(void) {
 *       TAP_RUN(test_x);
 *       TAP_RUN(test_y);
 *       return tap_done();
 *   }
 *
 * Each TAP_RUN is one TAP test point, run in a process of its own (see "the
 * runner" below): "ok N - test_x" when every CHECK in it held, "not ok N -
 * test_x" otherwise (each failed CHECK prints a diagnostic with file:line).
 * tap_done() prints the plan and returns the exit status.
 */
#ifndef PMGCM_TAP_H
#define PMGCM_TAP_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n_ = 0;
static int tap_failed_points_ = 0;
static int tap_cur_failed_ = 0;

#define CHECK(cond)                                                           \
    do {                                                                      \
        if (!(cond)) {                                                        \
            tap_cur_failed_++;                                                \
            printf("#   FAILED %s:%d: %s\n", __FILE__, __LINE__, #cond);     \
            fflush(stdout);                                                   \
        }                                                                     \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                    \
    do {                                                                      \
        long long va_ = (long long)(a), vb_ = (long long)(b);                 \
        if (va_ != vb_) {                                                     \
            tap_cur_failed_++;                                                \
            printf("#   FAILED %s:%d: %s == %s (%lld != %lld)\n", __FILE__,  \
                   __LINE__, #a, #b, va_, vb_);                               \
            fflush(stdout);                                                   \
        }                                                                     \
    } while (0)

/* Abort the current test point (after a failed precondition). */
#define REQUIRE(cond)                                                         \
    do {                                                                      \
        if (!(cond)) {                                                        \
            tap_cur_failed_++;                                                \
            printf("#   REQUIRE FAILED %s:%d: %s\n", __FILE__, __LINE__,     \
                   #cond);                                                    \
            fflush(stdout);                                                   \
            return;                                                           \
        }                                                                     \
    } while (0)

/* ---- the runner -------------------------------------------------------------
 * Each TAP_RUN runs its test in a child process of its own (as libuv's
 * runner does), so a crash, a hang or a leftover of one test cannot touch
 * the next: the child is killed after TAP_TIMEOUT seconds (default 600)
 * and a signal, a timeout, a sanitizer's or valgrind's non-zero exit all
 * make the point "not ok". Environment:
 *   TAP_TEST=name[,name...]  run only these tests (shell patterns allowed,
 *                            e.g. TAP_TEST='test_replay*'); a selection that
 *                            matches nothing is an error, not a silent pass
 *   TAP_TIMEOUT=seconds      per test (0 = none)
 *   TAP_FORK=0               run every test in this process (for gdb) */
#include <fnmatch.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static int tap_selected_any_ = 0;

/* A file of the source tree for the tests that check docs against tables:
 * abs_top_srcdir/rel, whole and NUL-terminated (malloc'd, free it), or
 * NULL (said on stdout as a TAP comment). */
static inline char *tap_read_doc(const char *rel)
{
    const char *top = getenv("abs_top_srcdir");
    char path[1024];
    char *buf = NULL;
    long n;
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", top && *top ? top : ".", rel);
    f = fopen(path, "rb");
    if (!f) {
        printf("#   cannot open %s (abs_top_srcdir unset?)\n", path);
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
        n < (16L << 20) && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = '\0';
        } else {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

static inline int tap_selected_(const char *name)
{
    const char *sel = getenv("TAP_TEST");
    char pat[256];
    if (sel == NULL || sel[0] == '\0') return 1;
    while (*sel) {
        size_t n = strcspn(sel, ", ");
        if (n > 0 && n < sizeof(pat)) {
            memcpy(pat, sel, n);
            pat[n] = '\0';
            if (fnmatch(pat, name, 0) == 0) return 1;
        }
        sel += n;
        while (*sel == ',' || *sel == ' ') sel++;
    }
    return 0;
}

static inline void tap_run_(void (*fn)(void), const char *name)
{
    const char *f = getenv("TAP_FORK"), *t = getenv("TAP_TIMEOUT");
    unsigned timeout = t != NULL && t[0] != '\0' ? (unsigned)atoi(t) : 600;
    int status = 0;
    pid_t pid;

    if (!tap_selected_(name)) return;
    tap_selected_any_ = 1;
    tap_cur_failed_ = 0;
    fflush(stdout);
    fflush(stderr);
    if (f != NULL && strcmp(f, "0") == 0) {
        fn();
    } else if ((pid = fork()) == 0) {
        alarm(timeout);
        fn();
        fflush(stdout);
        /* exit, not _exit: LeakSanitizer and valgrind check at exit */
        exit(tap_cur_failed_ ? 1 : 0);
    } else if (pid < 0) {
        printf("#   fork failed for %s\n", name);
        tap_cur_failed_++;
    } else {
        while (waitpid(pid, &status, 0) < 0) {
        }
        if (WIFSIGNALED(status)) {
            tap_cur_failed_++;
            if (WTERMSIG(status) == SIGALRM)
                printf("#   %s timed out after %u s (TAP_TIMEOUT)\n", name,
                       timeout);
            else
                printf("#   %s killed by signal %d\n", name,
                       WTERMSIG(status));
        } else if (WEXITSTATUS(status) != 0) {
            tap_cur_failed_++;
            if (WEXITSTATUS(status) != 1)
                printf("#   %s exited %d (a sanitizer or valgrind report "
                       "above?)\n", name, WEXITSTATUS(status));
        }
    }
    tap_n_++;
    if (tap_cur_failed_) tap_failed_points_++;
    printf("%s %d - %s\n", tap_cur_failed_ ? "not ok" : "ok", tap_n_, name);
    fflush(stdout);
}

#define TAP_RUN(fn) tap_run_(fn, #fn)

static inline int tap_done(void)
{
    const char *sel = getenv("TAP_TEST");
    if (!tap_selected_any_ && sel != NULL && sel[0] != '\0') {
        printf("Bail out! TAP_TEST=%s matched no test\n", sel);
        return 1;
    }
    printf("1..%d\n", tap_n_);
    return tap_failed_points_ ? 1 : 0;
}

#endif
