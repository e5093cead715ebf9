/*
 * cli.h - the pure parts of pmgcm (cli/), testable without a terminal or
 * a daemon: the join/sync progress line. Depends on nothing of ours.
 */
#ifndef PMGCM_CLI_H
#define PMGCM_CLI_H

#include <stdbool.h>
#include <stddef.h>

/* What the daemon's status says about a snapshot being loaded (its
 * "store" object; see README "Replicated data"). Unknown figures are 0:
 * PostgreSQL gives no row estimate for a table never analyzed. */
typedef struct pmc_progress {
    const char *state;   /* "loading", "catching-up", ... (not NULL) */
    const char *error;   /* why it waits, or "" (terminal-safe text) */
    bool loaded;         /* a snapshot is loaded: it is catching up */
    double rows, est_rows;
    double bytes, est_bytes;
    double tables_done, tables;
    double elapsed_ms;
} pmc_progress;

/* The terminal's width for a progress line drawn on fd: TIOCGWINSZ, else
 * $COLUMNS (20..1000), else 80. */
int pmc_term_width(int fd);

/* Writes the progress line for p into out (NUL-terminated, at most
 * width - 1 visible characters, so it never wraps even in a terminal
 * that wraps at the last column; no control characters). A bar and a
 * percentage when a total is known (rows, else bytes); bytes, rate and
 * elapsed time always. Parts that do not fit are left out, least useful
 * first. width < 20 is taken as 20; cap must exceed width. Returns the
 * length written. */
size_t pmc_progress_line(char *out, size_t cap, int width,
                         const pmc_progress *p);

/* 1234567 -> "1.2 MB" (decimal units, as PostgreSQL's pg_size_pretty
 * does not: kB, MB, GB with 1000). */
void pmc_human_bytes(double b, char *buf, size_t len);

#endif
