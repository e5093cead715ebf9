/*
 * replay.c - runs a fuzz target (LLVMFuzzerTestOneInput) over its seed
 * corpus, for `make check` without clang or libFuzzer.
 *
 *   replay_TARGET              every file of $srcdir/tests/fuzz/corpus/TARGET
 *   replay_TARGET PATH...      these files, and every file of these dirs
 *
 * Prints TAP: "1..1" and "ok 1 - TARGET: N inputs". An input that crashes
 * the target (a signal, or a sanitizer report under --enable-sanitizers,
 * or valgrind's error exit) ends the run: every file is named on stderr
 * ("# running PATH") before it runs, so the log names the culprit.
 * Inputs are run in name order, each from a malloc'ed copy of exactly its
 * size, so out-of-bounds reads are caught.
 */
#define _GNU_SOURCE
#include "tests/fuzz/fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef FUZZ_TARGET
#error "FUZZ_TARGET (the target's name) must be defined"
#endif

static const char *current = "(none)";

static void crashed(int sig)
{
    static const char a[] = "# crashed on input ";
    (void)!write(2, a, sizeof(a) - 1);
    (void)!write(2, current, strlen(current));
    (void)!write(2, "\n", 1);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "# %s: %s\n", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, len = 0;
    uint8_t *buf = malloc(cap);
    size_t got;
    while (buf && (got = fread(buf + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            uint8_t *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
    }
    int err = ferror(f);
    fclose(f);
    if (!buf || err) {
        fprintf(stderr, "# %s: read error\n", path);
        free(buf);
        return -1;
    }
    /* an exact-size copy: one byte past the input is outside the block */
    uint8_t *in = malloc(len ? len : 1);
    if (!in) abort();
    memcpy(in, buf, len);
    free(buf);
    current = path;
    fprintf(stderr, "# running %s (%zu bytes)\n", path, len);
    LLVMFuzzerTestOneInput(len ? in : NULL, len);
    current = "(none)";
    free(in);
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs path (a file, or every regular file of a directory). Returns the
 * number of inputs run, -1 on error. */
static long run_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "# %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) return run_file(path) == 0 ? 1 : -1;
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "# %s: %s\n", path, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof(*names));
            if (!nn) abort();
            names = nn;
        }
        if (asprintf(&names[n], "%s/%s", path, e->d_name) < 0) abort();
        n++;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof(*names), cmp_str);
    long count = 0;
    for (size_t i = 0; i < n; i++) {
        if (stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(names[i]) != 0) count = -1;
            else if (count >= 0) count++;
        }
        free(names[i]);
    }
    free(names);
    return count;
}

int main(int argc, char **argv)
{
    signal(SIGSEGV, crashed);
    signal(SIGBUS, crashed);
    signal(SIGFPE, crashed);
    signal(SIGILL, crashed);
    signal(SIGABRT, crashed);
    printf("1..1\n");
    fflush(stdout);
    long total = 0;
    int bad = 0;
    if (argc > 1) {
        for (int i = 1; i < argc; i++) {
            long k = run_path(argv[i]);
            if (k < 0) bad = 1;
            else total += k;
        }
    } else {
        const char *src = getenv("srcdir");
        char *dir = NULL;
        if (asprintf(&dir, "%s/tests/fuzz/corpus/%s", src ? src : ".",
                     FUZZ_TARGET) < 0)
            abort();
        long k = run_path(dir);
        if (k <= 0) bad = 1; /* a missing or empty corpus is a failure */
        else total = k;
        free(dir);
    }
    printf("%s 1 - %s: %ld inputs\n", bad ? "not ok" : "ok", FUZZ_TARGET,
           total);
    return bad;
}
