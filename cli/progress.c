/*
 * progress.c - the join/sync progress line (cli.h): pure, so a unit test
 * can check every width; pmgcm draws it with "\r\033[K" on a terminal.
 */
#include "cli/cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int pmc_term_width(int fd)
{
    struct winsize ws;
    const char *c;

    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
        return ws.ws_col;
    c = getenv("COLUMNS");
    if (c != NULL && strspn(c, "0123456789") == strlen(c) && strlen(c) > 0 &&
        strlen(c) < 5) {
        int v = atoi(c);
        if (v >= 20 && v <= 1000)
            return v;
    }
    return 80;
}

void pmc_human_bytes(double b, char *buf, size_t len)
{
    if (b < 0)
        b = 0;
    if (b >= 1e9)
        snprintf(buf, len, "%.2f GB", b / 1e9);
    else if (b >= 1e6)
        snprintf(buf, len, "%.1f MB", b / 1e6);
    else
        snprintf(buf, len, "%.0f kB", b / 1e3);
}

static void dur(double s, char *buf, size_t len)
{
    if (s < 0)
        s = 0;
    if (s < 100)
        snprintf(buf, len, "%.0fs", s);
    else if (s < 6000)
        snprintf(buf, len, "%.0fm%02.0fs", (double)(long)(s / 60),
                 s - 60 * (double)(long)(s / 60));
    else
        snprintf(buf, len, "%.0fh%02.0fm", (double)(long)(s / 3600),
                 (s - 3600 * (double)(long)(s / 3600)) / 60 - 0.5);
}

/* Copies s into out (cap) without control bytes, at most max chars. */
static size_t put(char *out, size_t cap, size_t at, const char *s, size_t max)
{
    for (size_t i = 0; s[i] != '\0' && i < max && at + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        out[at++] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    out[at] = '\0';
    return at;
}

size_t pmc_progress_line(char *out, size_t cap, int width,
                         const pmc_progress *p)
{
    enum { P_PCT, P_BYTES, P_RATE, P_ETA, P_TABLES, P_ROWS, P_TIME, P_N };
    char part[P_N][96], hb[32], he[32], t[32];
    bool on[P_N];
    size_t avail, used, o = 0;
    double frac = -1, secs = p->elapsed_ms / 1000.0;
    double rate = secs > 0 ? p->bytes / secs : 0;

    if (cap == 0)
        return 0;
    out[0] = '\0';
    if (width < 20)
        width = 20;
    avail = (size_t)width - 1;
    if (avail >= cap)
        avail = cap - 1;
    if (strcmp(p->state, "loading") != 0) {
        const char *what = p->loaded ? "catching up" : "waiting for a snapshot";
        o = put(out, cap, 0, what, avail);
        if (p->error[0] != '\0' && o + 2 < avail) {
            o = put(out, cap, o, ": ", avail - o);
            o = put(out, cap, o, p->error, avail - o);
        }
        return o;
    }
    if (p->est_rows > 0)
        frac = p->rows / p->est_rows;
    else if (p->est_bytes > 0)
        frac = p->bytes / p->est_bytes;
    if (frac > 1)
        frac = 1;
    pmc_human_bytes(p->bytes, hb, sizeof(hb));
    pmc_human_bytes(p->est_bytes, he, sizeof(he));
    memset(on, 0, sizeof(on));
    if (frac >= 0) {
        snprintf(part[P_PCT], sizeof(part[0]), "%.0f%%", frac * 100);
        on[P_PCT] = true;
    }
    if (p->est_bytes > 0)
        snprintf(part[P_BYTES], sizeof(part[0]), "%s/~%s", hb, he);
    else
        snprintf(part[P_BYTES], sizeof(part[0]), "%s", hb);
    on[P_BYTES] = true;
    pmc_human_bytes(rate, t, sizeof(t));
    snprintf(part[P_RATE], sizeof(part[0]), "%s/s", t);
    on[P_RATE] = true;
    if (frac > 0 && frac < 1 && rate > 0 && p->est_bytes > p->bytes) {
        dur((p->est_bytes - p->bytes) / rate, t, sizeof(t));
        snprintf(part[P_ETA], sizeof(part[0]), "ETA %s", t);
        on[P_ETA] = true;
    } else {
        dur(secs, t, sizeof(t));
        snprintf(part[P_TIME], sizeof(part[0]), "%s", t);
        on[P_TIME] = true;
    }
    if (p->tables > 0) {
        snprintf(part[P_TABLES], sizeof(part[0]), "tables %.0f/%.0f",
                 p->tables_done, p->tables);
        on[P_TABLES] = true;
    }
    if (p->est_rows > 0)
        snprintf(part[P_ROWS], sizeof(part[0]), "rows %.0f/~%.0f", p->rows,
                 p->est_rows);
    else
        snprintf(part[P_ROWS], sizeof(part[0]), "%.0f rows", p->rows);
    on[P_ROWS] = true;

    /* "snapshot" + " part" each; the bar takes " [...]" (at least 10
     * wide, at most 40); parts are dropped, least useful first, until
     * the rest fits */
    static const int drop_order[] = {P_ROWS, P_TABLES, P_TIME, P_ETA, P_RATE,
                                     P_BYTES, P_PCT};
    size_t min_bar = frac >= 0 ? 1 + 2 + 10 : 0;
    for (size_t d = 0;; d++) {
        used = strlen("snapshot");
        for (int i = 0; i < P_N; i++)
            if (on[i])
                used += 1 + strlen(part[i]);
        if (used + min_bar <= avail)
            break;
        if (d < sizeof(drop_order) / sizeof(drop_order[0])) {
            on[drop_order[d]] = false;
            continue;
        }
        min_bar = 0; /* nothing left to drop but the bar */
        if (used <= avail)
            break;
        return put(out, cap, 0, "snapshot", avail);
    }
    o = put(out, cap, 0, "snapshot", avail);
    if (min_bar > 0) {
        size_t bw = avail - used - 3, fill;
        if (bw > 40)
            bw = 40;
        fill = (size_t)(frac * (double)bw + 0.5);
        if (fill > bw)
            fill = bw;
        if (o + bw + 3 < cap) {
            out[o++] = ' ';
            out[o++] = '[';
            for (size_t k = 0; k < bw; k++)
                out[o++] = k < fill ? '#' : '.';
            out[o++] = ']';
            out[o] = '\0';
        }
    }
    static const int show_order[] = {P_PCT, P_BYTES, P_RATE, P_ETA, P_TIME,
                                     P_TABLES, P_ROWS};
    for (size_t k = 0; k < sizeof(show_order) / sizeof(show_order[0]); k++) {
        int i = show_order[k];
        if (!on[i])
            continue;
        o = put(out, cap, o, " ", avail - o);
        o = put(out, cap, o, part[i], avail - o);
    }
    return o;
}
