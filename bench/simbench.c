/*
 * simbench - the real gossip core at scale in the deterministic simulator
 * (tests/sim), against the anchors of ../shared/reference/anchors.md.
 *
 *   bench/simbench [--sizes 100,1000,5000] [--trials K] [--window S]
 *                  [--loss-nodes N] [--loss-minutes M] [--losses 0,1,5,10,20]
 *                  [--stagger MS] [--skew MS] [--seed N] [--out DIR]
 *
 * For each N: boot N nodes (a join every --stagger ms, default 2 up to
 * 5,000 nodes and 10 above: a faster wave only piles up announcements in
 * every node's queue) until every node sees every node alive and no
 * update is queued (boot: virtual and real seconds, CPU seconds); then
 *   - steady state for a window (default: one push-pull period of N, at
 *     least 60 s): bytes sent per node per second (UDP, and UDP + TCP), real
 *     CPU microseconds per simulated node-second, and what stands for a
 *     daemon's wake-ups: events (datagrams delivered, timer ticks) and
 *     datagrams sent per node per second;
 *   - K crashes (default 5, 3 above 2,000 nodes; at most 16), one at a
 *     time: time until the first node suspects it, the first declares it
 *     dead, and every live node has it dead (median, max and max/median);
 *   - K broadcasts from random nodes: gossip periods until every node has it.
 * --skew MS: every node's wall clock is off by a fixed amount uniform in
 * +-MS (default 5: NTP on a LAN); the probe schedule numbers its periods by
 * it. Then, on loss-nodes nodes (default 100) for loss-minutes virtual minutes
 * (default 60) per loss rate: views that turned a live node dead (false
 * deaths) and suspect, per node-hour.
 *
 * Anchors printed beside each number: SWIM's expected first detection
 * e/(e-1) protocol periods; log2 N periods for spread (target: 2.5 log2 N at
 * N = 1,000); memberlist's formulas for the same N with its LAN defaults
 * (probe 1 s, suspicion min SuspicionMult(4) * max(1, log10 N) * 1 s, max 6x,
 * retransmits 4 * ceil(log10(N+1))), and this core's own formulas with its
 * defaults. Writes DIR/sim_scale.dat and DIR/sim_loss.dat for bench/sim.sh.
 */
#include "tests/sim/sim.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

typedef struct row {
    size_t n;
    double boot_virt, boot_real, boot_cpu;
    double first_sus, first_dead, all_dead; /* medians, s */
    double all_dead_max;
    double bcast_periods, bcast_periods_max;
    double udp_bps, total_bps; /* bytes per node per second */
    double cpu_us;             /* per simulated node-second */
    double ev_ps, dg_ps;       /* events, datagrams sent per node-second */
    double rss_mb, hwm_mb; /* VmRSS after the size's run; VmHWM so far */
    double pool_mb;        /* shared member records (gsp_pool) */
    double window;
} row;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* VmRSS or VmHWM of this process, MB */
static double status_mb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double v = 0;
    size_t kl = strlen(key);
    while (f && fgets(line, sizeof(line), f))
        if (!strncmp(line, key, kl) && line[kl] == ':')
            v = strtod(line + kl + 1, NULL) / 1024.0;
    if (f) fclose(f);
    return v;
}

static double stagger_ms = -1; /* --stagger; < 0: by N */
static double skew_ms = 5;     /* --skew */

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    if (!n) return NAN;
    qsort(v, n, sizeof(*v), cmp_d);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static uint64_t sm64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static double last_progress;

static bool c_quiet(sim *s, void *ud)
{
    (void)ud;
    size_t pending = 0;
    for (size_t i = 0; i < sim_max_nodes(s); i++)
        if (sim_is_up(s, i))
            pending += gsp_core_pending_updates(sim_core(s, i));
    if (mono() - last_progress > 60) {
        last_progress = mono();
        fprintf(stderr, "simbench:   t=%.0f s virtual, %zu updates queued "
                        "over all nodes\n", sim_now_ms(s) / 1000.0, pending);
    }
    return !pending && sim_converged(s);
}

typedef struct watch {
    size_t subj;
    uint64_t version;
} watch;

static bool c_all_dead(sim *s, void *ud)
{
    return sim_all_see(s, ((watch *)ud)->subj, 1 << GSP_DEAD);
}

static bool c_all_have(sim *s, void *ud)
{
    return sim_user_have(s, ((watch *)ud)->version) == sim_n_up(s);
}

static sim *boot(size_t n, uint64_t seed, double *virt, double *real,
                 double *cpu)
{
    sim_opts o;
    sim_opts_default(&o);
    o.seed = seed;
    o.max_nodes = n;
    if (n >= 1000) o.join_seeds = 1; /* 3 seeds x N full-state joins is slow */
    o.clock_skew_us = (uint32_t)(skew_ms * 1000);
    sim *s = sim_new(&o);
    if (!s) return NULL;
    double t0 = mono(), c0 = cpu_now();
    last_progress = t0;
    double st = stagger_ms >= 0 ? stagger_ms : n > 5000 ? 10 : 2;
    sim_start_range(s, 0, n, (uint64_t)(st * 1000));
    bool ok = sim_run_until_cond(s, 3600000, n >= 1000 ? 1000 : 250, c_quiet,
                                 NULL);
    *virt = sim_now_ms(s) / 1000.0;
    *real = mono() - t0;
    if (cpu) *cpu = cpu_now() - c0;
    if (!ok) fprintf(stderr, "simbench: N=%zu did not converge in 1 h\n", n);
    return s;
}

static void run_size(size_t n, int trials, double window_min, uint64_t seed,
                     row *r)
{
    memset(r, 0, sizeof(*r));
    r->n = n;
    fprintf(stderr, "simbench: N=%zu: booting...\n", n);
    sim *s = boot(n, seed, &r->boot_virt, &r->boot_real, &r->boot_cpu);
    if (!s) return;
    fprintf(stderr, "simbench: N=%zu: converged at %.1f s virtual, %.1f s "
                    "real, %.1f s CPU, RSS %.0f MB\n", n, r->boot_virt,
            r->boot_real, r->boot_cpu, status_mb("VmRSS"));
    /* settle past the first push-pulls of every node (they fire at
     * 0.5..1.5 x the base interval after start), then measure */
    gsp_config cfg;
    gsp_config_default(&cfg);
    sim_run_until(s, sim_now_ms(s) > 45000 ? sim_now_ms(s) : 45000);
    double l2 = log2((double)n);
    double pp = cfg.pushpull_interval_ms / 1000.0;
    if (n > 32) pp *= ceil(l2 - 5) + 1;
    double w = pp > window_min ? pp : window_min;
    r->window = w;
    sim_counters c0, c1;
    sim_get_counters(s, &c0);
    double cpu0 = cpu_now();
    sim_run_for(s, (uint64_t)(w * 1000));
    double cpu = cpu_now() - cpu0;
    sim_get_counters(s, &c1);
    r->udp_bps = (c1.udp_bytes - c0.udp_bytes) / (double)n / w;
    r->total_bps = (c1.udp_bytes - c0.udp_bytes + c1.stream_bytes -
                    c0.stream_bytes) / (double)n / w;
    r->cpu_us = cpu * 1e6 / ((double)n * w);
    r->ev_ps = (double)(c1.events - c0.events) / (double)n / w;
    r->dg_ps = (double)(c1.udp_sent - c0.udp_sent) / (double)n / w;
    fprintf(stderr, "simbench: N=%zu: steady %.0f s: %.0f B/node/s UDP, %.0f "
                    "total, %.1f us CPU per node-s, %.2f events and %.2f "
                    "datagrams sent per node-s\n", n, w, r->udp_bps,
            r->total_bps, r->cpu_us, r->ev_ps, r->dg_ps);

    uint64_t rng = seed ^ n;
    double fs[16], fd[16], ad[16], bp[16];
    int k = 0;
    for (int t = 0; t < trials && t < 16; t++) {
        size_t v;
        do v = 3 + (size_t)(sm64(&rng) % (n - 3));
        while (!sim_is_up(s, v));
        sim_mark_reset(s, v);
        uint64_t t0 = sim_now_ms(s);
        sim_crash(s, v);
        watch wt = {.subj = v};
        bool ok = sim_run_until_cond(s, t0 + 120000, 20, c_all_dead, &wt);
        if (!ok) {
            fprintf(stderr, "simbench: N=%zu: crash of %zu not dead "
                            "everywhere in 120 s\n", n, v);
            continue;
        }
        fs[k] = (sim_first_mark(s, v, GSP_SUSPECT) - t0) / 1000.0;
        fd[k] = (sim_first_mark(s, v, GSP_DEAD) - t0) / 1000.0;
        ad[k] = (sim_now_ms(s) - t0) / 1000.0;
        if (ad[k] > r->all_dead_max) r->all_dead_max = ad[k];
        fprintf(stderr, "simbench: N=%zu: crash %d of node %zu: first suspect "
                        "%.2f s, first dead %.2f s, dead everywhere %.2f s\n",
                n, k + 1, v, fs[k], fd[k], ad[k]);
        k++;
        sim_run_for(s, 10000);
    }
    r->first_sus = median(fs, (size_t)k);
    r->first_dead = median(fd, (size_t)k);
    r->all_dead = median(ad, (size_t)k);
    sim_watch_user_key(s, 1);
    int kb = 0;
    for (int t = 0; t < trials && t < 16; t++) {
        size_t v;
        do v = (size_t)(sm64(&rng) % n);
        while (!sim_is_up(s, v));
        uint64_t t0 = sim_now_ms(s);
        sim_broadcast(s, v, 1, (uint64_t)t + 1, "config", 6);
        watch wt = {.version = (uint64_t)t + 1};
        if (!sim_run_until_cond(s, t0 + 60000, 10, c_all_have, &wt)) {
            fprintf(stderr, "simbench: N=%zu: broadcast not everywhere in "
                            "60 s\n", n);
            continue;
        }
        bp[kb] = (double)(sim_now_ms(s) - t0) / (double)cfg.gossip_interval_ms;
        if (bp[kb] > r->bcast_periods_max) r->bcast_periods_max = bp[kb];
        kb++;
        sim_run_for(s, 5000);
    }
    r->bcast_periods = median(bp, (size_t)kb);
    r->rss_mb = status_mb("VmRSS");
    r->hwm_mb = status_mb("VmHWM");
    size_t pb = 0;
    gsp_pool_stats(sim_pool(s), NULL, &pb);
    r->pool_mb = (double)pb / 1048576.0;
    sim_free(s);
}

typedef struct lrow {
    double loss;
    size_t n;
    double hours;
    uint64_t dead, suspect;
} lrow;

static void run_loss(double loss, size_t n, double minutes, uint64_t seed,
                     lrow *r)
{
    double v, re;
    r->loss = loss;
    r->n = n;
    r->hours = minutes / 60.0;
    sim *s = boot(n, seed, &v, &re, NULL);
    if (!s) return;
    sim_run_for(s, 10000);
    sim_reset_marks(s);
    sim_set_loss(s, loss);
    sim_run_for(s, (uint64_t)(minutes * 60000));
    sim_counters c;
    sim_get_counters(s, &c);
    r->dead = c.dead_marks_up;
    r->suspect = c.suspect_marks_up;
    fprintf(stderr, "simbench: loss %.0f%%: %llu false dead views, %llu "
                    "suspect views in %.1f node-hours\n", loss * 100,
            (unsigned long long)r->dead, (unsigned long long)r->suspect,
            n * r->hours);
    sim_free(s);
}

static size_t parse_list(const char *s, double *out, size_t max)
{
    size_t n = 0;
    while (*s && n < max) {
        char *end;
        out[n++] = strtod(s, &end);
        if (end == s) break;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    double sizes[8] = {100, 1000, 5000};
    size_t nsizes = 3;
    double losses[8] = {0, 1, 5, 10, 20};
    size_t nlosses = 5;
    int trials = 5;
    double window = 60;
    size_t loss_nodes = 100;
    double loss_minutes = 60;
    uint64_t seed = 1;
    const char *out = "bench/out";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "simbench: %s needs a value\n", a);
            return 2;
        }
        if (!strcmp(a, "--sizes")) nsizes = parse_list(v, sizes, 8);
        else if (!strcmp(a, "--losses")) nlosses = parse_list(v, losses, 8);
        else if (!strcmp(a, "--trials")) trials = atoi(v);
        else if (!strcmp(a, "--window")) window = atof(v);
        else if (!strcmp(a, "--loss-nodes")) loss_nodes = strtoul(v, NULL, 0);
        else if (!strcmp(a, "--loss-minutes")) loss_minutes = atof(v);
        else if (!strcmp(a, "--seed")) seed = strtoull(v, NULL, 0);
        else if (!strcmp(a, "--stagger")) stagger_ms = atof(v);
        else if (!strcmp(a, "--skew")) skew_ms = atof(v);
        else if (!strcmp(a, "--out")) out = v;
        else {
            fprintf(stderr, "simbench: unknown option %s\n", a);
            return 2;
        }
        i++;
    }

    gsp_config cfg;
    gsp_config_default(&cfg);
    /* T: the probe interval after a failure (a probe's length, the base of
     * suspicion timeouts); Tq: the interval while quiet (a crash is first
     * probed at that pace) */
    double T = cfg.probe_interval_ms / 1000.0, G = cfg.gossip_interval_ms / 1000.0;
    double Tq = cfg.probe_quiet_interval_ms > cfg.probe_interval_ms
                    ? cfg.probe_quiet_interval_ms / 1000.0 : T;
    const double e1 = exp(1) / (exp(1) - 1); /* SWIM: e/(e-1) periods */

    row rows[8];
    for (size_t i = 0; i < nsizes; i++) {
        size_t n = (size_t)sizes[i];
        run_size(n, n > 2000 && trials > 3 ? 3 : trials, window, seed, &rows[i]);
    }
    lrow lrows[8];
    for (size_t i = 0; i < nlosses; i++)
        run_loss(losses[i] / 100.0, loss_nodes, loss_minutes, seed + i,
                 &lrows[i]);

    printf("\nsimbench: gossip core in the simulator (seed %llu, clocks "
           "+-%.0f ms); core defaults: probe %.2f s while quiet, %.2f s "
           "after a failure, gossip %.1f s, suspicion mult %u/%u, "
           "retransmit mult %u\n\n", (unsigned long long)seed, skew_ms, Tq,
           T, G, cfg.suspicion_mult, cfg.suspicion_max_mult,
           cfg.retransmit_mult);
    printf("Failure detection (median of crashes; seconds)\n");
    printf("%6s | %9s %8s %7s | %9s | %9s %9s %7s %7s | %12s %12s %7s\n",
           "N", "1st susp", "SWIM", "ratio", "1st dead", "all dead", "max",
           "max/med", "/ours", "ours formula", "memberlist", "/ml");
    for (size_t i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        double l10 = r->n > 10 ? log10((double)r->n) : 1;
        /* SWIM (random targets): the first probe of the crashed node comes
         * e/(e-1) quiet periods later; it and its verification take 2 T
         * before anybody shows it suspect */
        double swim = e1 * Tq;
        /* expected dead everywhere: Tq / 2 until probed (the schedule
         * probes every member once per period) + the probe (T) +
         * suspicion min (Lifeguard shrinks the timer to min once k
         * independent confirmations arrive; it runs from the probe's end) */
        double ours = Tq / 2 + T + cfg.suspicion_mult * l10 * T;
        double ml = e1 * 1.0 + 1.0 + 4 * l10 * 1.0;
        printf("%6zu | %9.2f %8.2f %7.2f | %9.2f | %9.2f %9.2f %7.2f %7.2f | "
               "%12.2f %12.2f %7.2f\n", r->n, r->first_sus, swim,
               r->first_sus / swim, r->first_dead, r->all_dead,
               r->all_dead_max, r->all_dead_max / r->all_dead,
               r->all_dead / ours, ours, ml, r->all_dead / ml);
    }
    printf("\nDissemination and cost\n");
    printf("%6s | %8s %8s %8s %7s | %6s %6s | %10s %10s | %8s %10s | %8s "
           "%8s\n", "N", "bcast p", "max p", "log2 N", "/log2N", "retx", "ml",
           "B/node/s", "+TCP", "CPU us", "node-s/s", "events/s", "dgram/s");
    for (size_t i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        double l2 = log2((double)r->n);
        uint32_t retx = gsp_retransmit_limit(cfg.retransmit_mult, r->n);
        uint32_t retx_ml = gsp_retransmit_limit(4, r->n);
        printf("%6zu | %8.1f %8.1f %8.1f %7.2f | %6u %6u | %10.0f %10.0f | "
               "%8.1f %10.0f | %8.2f %8.2f\n", r->n, r->bcast_periods,
               r->bcast_periods_max, l2, r->bcast_periods / l2, retx, retx_ml,
               r->udp_bps, r->total_bps, r->cpu_us, 1e6 / r->cpu_us,
               r->ev_ps, r->dg_ps);
    }
    printf("\nForming the cluster, and memory (the simulator process)\n");
    printf("%6s | %8s %8s %8s %8s | %9s %9s %9s %10s\n", "N", "boot s",
           "real s", "CPU s", "stagger", "RSS MB", "peak MB", "pool MB",
           "B/record");
    for (size_t i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        double st = stagger_ms >= 0 ? stagger_ms : r->n > 5000 ? 10 : 2;
        printf("%6zu | %8.1f %8.1f %8.1f %6.0fms | %9.0f %9.0f %9.1f %10.0f\n",
               r->n, r->boot_virt, r->boot_real, r->boot_cpu, st, r->rss_mb,
               r->hwm_mb, r->pool_mb,
               r->rss_mb * 1048576.0 / ((double)r->n * (double)r->n));
    }
    printf("\nFalse deaths (views that turned a live node dead) at random "
           "loss, %zu nodes, %.0f virtual min each\n", loss_nodes,
           loss_minutes);
    printf("%6s | %8s %14s | %10s %16s\n", "loss %", "deaths",
           "per node-hour", "suspects", "per node-hour");
    for (size_t i = 0; i < nlosses; i++) {
        lrow *l = &lrows[i];
        double nh = l->n * l->hours;
        printf("%6.0f | %8llu %14.4f | %10llu %16.1f\n", l->loss * 100,
               (unsigned long long)l->dead, l->dead / nh,
               (unsigned long long)l->suspect, l->suspect / nh);
    }

    printf("\nTargets\n");
    for (size_t i = 0; i < nsizes; i++) {
        row *r = &rows[i];
        if (r->n == 1000) {
            double lim = 2.5 * log2(1000.0);
            printf("  broadcast reaches all of N=1000 within 2.5 log2 N = %.1f "
                   "periods: median %.1f, max %.1f  %s\n", lim,
                   r->bcast_periods, r->bcast_periods_max,
                   r->bcast_periods_max <= lim ? "MET" : "MISSED");
            printf("  >= 1000 simulated node-seconds per real second at "
                   "N=1000: %.0f  %s\n", 1e6 / r->cpu_us,
                   1e6 / r->cpu_us >= 1000 ? "MET" : "MISSED");
        }
        if (r->n == 5000)
            printf("  forming 5,000 nodes in under 5 minutes of real time: "
                   "%.0f s (%.0f s CPU)  %s\n", r->boot_real, r->boot_cpu,
                   r->boot_real < 300 ? "MET" : "MISSED");
        if (r->n >= 10000)
            printf("  N=%zu in 24 GB: peak %.1f GB  %s\n", r->n,
                   r->hwm_mb / 1024, r->hwm_mb < 24 * 1024 ? "MET" : "MISSED");
    }
    row *lo = NULL, *hi = NULL;
    for (size_t i = 0; i < nsizes; i++) {
        if (rows[i].n == 100) lo = &rows[i];
        if (rows[i].n == 5000) hi = &rows[i];
    }
    if (lo && hi) {
        double gu = hi->udp_bps / lo->udp_bps, gt = hi->total_bps / lo->total_bps;
        printf("  bytes per node per second grow at most 1.5x from N=100 to "
               "5000: UDP %.2fx, UDP+TCP (push-pull by digest) %.2fx  %s\n",
               gu, gt, gt <= 1.5 ? "MET" : "MISSED");
    }
    int fd_bad = 0;
    for (size_t i = 0; i < nlosses; i++) {
        if (lrows[i].loss <= 0.10 + 1e-9 && lrows[i].dead) fd_bad = 1;
        if (fabs(lrows[i].loss - 0.10) < 1e-9) {
            /* 1,402 per node-hour before the verification of failed probes
             * (issue 17, same workload) */
            double ph = lrows[i].suspect / (lrows[i].n * lrows[i].hours);
            printf("  suspect views per node-hour at 10%% loss cut 5x from "
                   "1,402: %.1f (%.0fx)  %s\n", ph, ph > 0 ? 1402 / ph : 0.0,
                   ph <= 1402.0 / 5 ? "MET" : "MISSED");
        }
    }
    printf("  zero false deaths up to 10%% loss: %s\n",
           fd_bad ? "MISSED" : "MET");

    char path[512];
    snprintf(path, sizeof(path), "%s/sim_scale.dat", out);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "# N first_susp first_dead all_dead all_dead_max swim_first "
                   "ours_formula memberlist bcast_p bcast_max log2N "
                   "udp_Bps total_Bps cpu_us rss_mb boot_real boot_cpu "
                   "peak_mb all_dead_max_over_median events_per_node_s "
                   "dgrams_per_node_s\n");
        for (size_t i = 0; i < nsizes; i++) {
            row *r = &rows[i];
            double l10 = r->n > 10 ? log10((double)r->n) : 1;
            fprintf(f, "%zu %.3f %.3f %.3f %.3f %.3f %.3f %.3f %.2f %.2f %.3f "
                       "%.1f %.1f %.2f %.0f %.1f %.1f %.0f %.3f %.3f %.3f\n",
                    r->n, r->first_sus, r->first_dead, r->all_dead,
                    r->all_dead_max, e1 * Tq,
                    Tq / 2 + T + cfg.suspicion_mult * l10 * T,
                    e1 + 1 + 4 * l10, r->bcast_periods, r->bcast_periods_max,
                    log2((double)r->n), r->udp_bps, r->total_bps, r->cpu_us,
                    r->rss_mb, r->boot_real, r->boot_cpu, r->hwm_mb,
                    r->all_dead_max / r->all_dead, r->ev_ps, r->dg_ps);
        }
        fclose(f);
    } else {
        fprintf(stderr, "simbench: cannot write %s\n", path);
    }
    snprintf(path, sizeof(path), "%s/sim_loss.dat", out);
    f = fopen(path, "w");
    if (f) {
        fprintf(f, "# loss_pct deaths_per_node_hour suspects_per_node_hour "
                   "deaths node_hours\n");
        for (size_t i = 0; i < nlosses; i++) {
            lrow *l = &lrows[i];
            double nh = l->n * l->hours;
            fprintf(f, "%.0f %.5f %.2f %llu %.1f\n", l->loss * 100,
                    l->dead / nh, l->suspect / nh, (unsigned long long)l->dead,
                    nh);
        }
        fclose(f);
    }
    return 0;
}
